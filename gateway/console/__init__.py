"""The bench console: a line-oriented command prompt on a serial port and a local Unix socket.

A technician reaches it with ``picocom -b 115200 /dev/ttyACM0`` (USB gadget serial or a
USB-UART) or, on the gateway itself, with ``duogate console``. It reads the live
``GatewayState`` and acts through the bridge's ``Controls``.

Lines end with CR or LF. On the serial port the console echoes what is typed and handles
backspace (terminal programs do not echo locally); on the socket the client's terminal does
that. ``tail`` and the wait in ``send`` stop on any input.

Modules, one job each:

* ``parser``: the command grammar, a typed line to a request (also used by the web page);
* ``formatting``: the tables and status text the console prints (also used by the web page);
* ``editor``: line editing of raw terminal input (echo, backspace, escape sequences);
* ``wire``: what both ends of the socket agree on (its place, prompt, greeting, farewell);
* ``session``: one person at the prompt, running requests against the state and controls;
* ``server``: the Unix-socket and serial-port servers the daemon starts;
* ``client``: ``duogate console``, the program on the other end of the socket.

This package module imports none of them, so that importing one does not load the others.
"""
