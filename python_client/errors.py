"""Turnout's exceptions (the hierarchy is drawn in ``turnout._internal.errors``).

They are defined in the internal package so that the controller, proxy and
replica processes raise the same classes without importing the client; this
module is their public name.
"""

from turnout._internal.errors import AlreadyExistsError as AlreadyExistsError
from turnout._internal.errors import BackendError as BackendError
from turnout._internal.errors import CapacityError as CapacityError
from turnout._internal.errors import DeadlineExceededError as DeadlineExceededError
from turnout._internal.errors import InUseError as InUseError
from turnout._internal.errors import InvalidArgumentError as InvalidArgumentError
from turnout._internal.errors import MethodNotFoundError as MethodNotFoundError
from turnout._internal.errors import NotFoundError as NotFoundError
from turnout._internal.errors import NotRunningError as NotRunningError
from turnout._internal.errors import OverloadedError as OverloadedError
from turnout._internal.errors import PermissionDeniedError as PermissionDeniedError
from turnout._internal.errors import TokenFileError as TokenFileError
from turnout._internal.errors import TurnoutError as TurnoutError
from turnout._internal.errors import TurnoutValueError as TurnoutValueError
from turnout._internal.errors import UnauthenticatedError as UnauthenticatedError
from turnout._internal.errors import UnavailableError as UnavailableError
from turnout._internal.errors import UnimplementedError as UnimplementedError
from turnout._internal.errors import error_from_status as error_from_status
from turnout._internal.errors import status_for as status_for
