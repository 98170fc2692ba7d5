"""Topology files: their schema, the registry of names they use, and the builder."""

from .build import CheckpointSettings as CheckpointSettings
from .build import Expectation as Expectation
from .build import Pipeline as Pipeline
from .checkpoint import CheckpointStore as CheckpointStore
from .checkpoint import DamagedEpoch as DamagedEpoch
from .checkpoint import EpochInfo as EpochInfo
from .errors import CheckpointError as CheckpointError
from .errors import FieldError as FieldError
from .errors import TopologyError as TopologyError
from .errors import raise_field_errors as raise_field_errors
from .registry import Processor as Processor
from .registry import ProcessorType as ProcessorType
from .registry import Registry as Registry
from .registry import Workload as Workload
from .registry import WorkloadType as WorkloadType
from .schema import Checked as Checked
from .schema import CheckpointSpec as CheckpointSpec
from .schema import ConsumerSpec as ConsumerSpec
from .schema import ExpectSpec as ExpectSpec
from .schema import GatewaySpec as GatewaySpec
from .schema import NodeSpec as NodeSpec
from .schema import ProducerSpec as ProducerSpec
from .schema import RedisSpec as RedisSpec
from .schema import TopicSpec as TopicSpec
from .schema import Topology as Topology
from .segment import Segment as Segment
