"""The CircuitPython side of the node library in a real MicroPython interpreter, whose parser
and object model CircuitPython shares (tests/micropython_fixtures.py): ``node/rfm9x.py``
imports with the rest of the library, and the example node program ``examples/node/code.py``
compiles, so neither uses Python that a Feather cannot run. Their behaviour is tested on
CPython (tests/test_node_rfm9x.py, tests/test_node_circuitpython.py)."""

from __future__ import annotations

import json

from tests.micropython_fixtures import (
    CBOR2,
    CRYPTOLIB_STAND_IN,
    NODE_LIBRARY,
    ROOT,
    run_micropython,
)

EXAMPLE = ROOT / "examples" / "node" / "code.py"


def test_rfm9x_adapter_and_example_program_are_portable() -> None:
    source = EXAMPLE.read_text()
    script = f"""
import json
import node.rfm9x
import node.runner
radio = node.rfm9x.Rfm9xRadio
compile({source!r}, "code.py", "exec")
print(json.dumps({{"adapter": radio.__name__, "radio_methods": [
    name for name in ("configure", "start_transmit", "tx_finished", "start_receive",
                      "received", "receiving", "standby", "sleep") if hasattr(radio, name)]}}))
"""
    output = run_micropython(script, [NODE_LIBRARY, CBOR2, CRYPTOLIB_STAND_IN])
    result = json.loads(output.strip().splitlines()[-1])
    assert result["adapter"] == "Rfm9xRadio"
    assert len(result["radio_methods"]) == 8
