"""``accept_batch`` and ``context``: what a handler needs to know about batches.

Defined in ``turnout._internal.batching``, which the replica reads too; this
module is their public name.
"""

from turnout._internal.batching import Context as Context
from turnout._internal.batching import accept_batch as accept_batch
from turnout._internal.batching import context as context
