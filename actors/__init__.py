"""The ringflow runtime: partitions with rings, topics, producers, consumer groups, supervision.

This package knows nothing of topology files or workloads; ``topology`` and ``sim`` build on it.
"""

from .errors import BatchTooLargeError as BatchTooLargeError
from .errors import CommitError as CommitError
from .errors import ConfigurationError as ConfigurationError
from .errors import GatewayError as GatewayError
from .errors import RingflowError as RingflowError
from .errors import SequenceError as SequenceError
from .errors import SupervisionError as SupervisionError
from .errors import TopicClosedError as TopicClosedError
from .gateway import Gateway as Gateway
from .group import ASSIGNMENT_STRATEGIES as ASSIGNMENT_STRATEGIES
from .group import Consumer as Consumer
from .group import ConsumerGroup as ConsumerGroup
from .group import GroupStatistics as GroupStatistics
from .group import assign_range as assign_range
from .group import assign_round_robin as assign_round_robin
from .partition import Partition as Partition
from .partition import PartitionState as PartitionState
from .partition import PartitionStatistics as PartitionStatistics
from .partitioner import Partitioner as Partitioner
from .partitioner import stable_hash as stable_hash
from .producer import Producer as Producer
from .producer import ProducerStatistics as ProducerStatistics
from .producer import open_producer as open_producer
from .record import BatchCodec as BatchCodec
from .record import Columns as Columns
from .record import Key as Key
from .record import Record as Record
from .record import RecordBatch as RecordBatch
from .record import StoredRecord as StoredRecord
from .remote import RemoteConsumer as RemoteConsumer
from .remote import RemoteGroup as RemoteGroup
from .remote import RemoteTopic as RemoteTopic
from .remote import open_remote_topic as open_remote_topic
from .supervisor import CrashReport as CrashReport
from .supervisor import Supervisor as Supervisor
from .supervisor import SupervisorStatistics as SupervisorStatistics
from .supervisor import open_supervisor as open_supervisor
from .topic import Topic as Topic
