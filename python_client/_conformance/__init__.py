"""The replica conformance kit (docs/replica-protocol.md): ``check`` drives a
running replica through the contract (``turnout replica-check``), ``echo`` is
the conformance handler in Python."""
