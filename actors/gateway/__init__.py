"""A node's gateway: serves its partitions and consumer groups to other nodes, and taps.

:mod:`.routing` holds the :class:`Gateway` (the server, its token, the routing of each
connection); :mod:`.producers`, :mod:`.members` and :mod:`.taps` serve the three kinds of
connection; :mod:`.endpoint` holds what they share.
"""

from .producers import GatewayCheckpoint as GatewayCheckpoint
from .routing import Gateway as Gateway
from .routing import GatewayStatistics as GatewayStatistics
