"""Modbus RTU/TCP slaves polled into reports, writes as commands (pymodbus).

``drivers.modbus.driver.ModbusDriver`` is the entry point; ``drivers.modbus.sim`` is the
simulated twin (pymodbus's own server over TCP or a pty serial line).
"""
