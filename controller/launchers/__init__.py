"""How the controller starts and supervises its children: the ``Launcher``
interface (``base``) and its implementations (``local``: OS processes on
this machine)."""
