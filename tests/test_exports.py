"""The packages export exactly their public API.

Every public class and function defined in a module of ``actors`` or ``topology`` is either
re-exported by its package or listed below as used through its module (the wire protocol's
frames, the Redis logger's helpers, the builder's parts); every name a package exports is
defined in one of its own modules. A new public name must take one side.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import actors
import topology

MODULE_LEVEL = {
    "actors": {
        "connection": {"binary", "greet", "keep_trying", "refusal"},
        "gateway.endpoint": {
            "FrameReader",
            "Owed",
            "Refusal",
            "Settings",
            "Signal",
            "close",
            "gone",
            "peer",
        },
        "gateway.members": {"MemberEndpoint"},
        "gateway.producers": {"ProducerEndpoint"},
        "gateway.routing": {"token_of"},
        "gateway.taps": {"TapEndpoint"},
        "partition": {"as_columns"},
        "producer": {"Destination", "Sink"},
        "redislog": {"execute_in_asyncio", "sleep_real"},
        "table": {"Field", "Schema", "concat", "same", "take"},
        "topic": {"refuse_if_never"},
        "wire": {
            "Batch",
            "Delivery",
            "End",
            "Finish",
            "Finished",
            "Hello",
            "Idle",
            "Leave",
            "Next",
            "Welcome",
            "Window",
            "batch_problem",
            "check_hello",
            "delivery_frame",
            "describe_decode_error",
            "disagreement",
            "hello_problem",
            "incompatible",
            "offsets_problem",
        },
    },
    "topology": {
        "integrity": {"epoch_checksum", "part_checksum"},
        "epochs": {"Barrier", "BarrierStatistics", "Checkpointer", "RunClock", "all_of"},
        "node": {
            "GatewayState",
            "MemberPositions",
            "Node",
            "NodeStatistics",
            "RemoteLink",
            "output_id",
            "reopened_topics",
        },
        "plan": {
            "ProducerPlan",
            "agreement",
            "api_nodes",
            "check_placement",
            "event_types",
            "fingerprint",
            "make_plans",
            "producer_id",
            "split_evenly",
            "split_proportionally",
            "value_type",
        },
        "checks": {"at_least", "at_most", "checks", "optional_name", "positive"},
        "convert": {"describe_errors", "make_converter"},
        "crosscheck": {"order_problems", "problems_across", "remote_output_problems"},
        "dead_letters": {"runs"},
        "delivering": {"coalesced", "letter_shares"},
        "forwarding": {"Output"},
        "loading": {"duplicate_keys", "load_yaml", "read_text"},
        "segment": {"SegmentLog", "decode_segments", "encode_segments"},
        "processing": {"Consumers", "folder", "make_consumers", "tables_of"},
        "snapshot": {
            "ClockPart",
            "IntakePart",
            "ConsumerTallyPart",
            "GatewayPart",
            "MemberPart",
            "Part",
            "PartitionContents",
            "PartitionPart",
            "ProcessorPart",
            "ProcessorState",
            "ProducerPart",
            "RemotePartitionPart",
            "RemoteTopicPart",
            "RetainedRecords",
            "Stateful",
            "StoredBatch",
            "capture_parts",
            "decode",
            "encode",
            "restore_parts",
            "restoring",
        },
        "serving": {"Building", "Served", "make_intake", "open_sink", "open_sinks"},
        "openapi": {"docs_page", "openapi_document"},
        "source": {"SourceStatistics", "WorkloadSource"},
        "topics": {"durable_reads", "exposing", "hold_back", "make_topics"},
        "tally": {"check_expectations"},
    },
}
"""Public names used through their module rather than the package, per package and module."""

PACKAGES = [actors, topology]


def modules_of(package: types.ModuleType) -> dict[str, types.ModuleType]:
    """Every public module of ``package`` and of its subpackages, imported, by its name
    inside the package (``gateway.taps``); a subpackage itself is listed too."""
    prefix = f"{package.__name__}."
    return {
        info.name.removeprefix(prefix): importlib.import_module(info.name)
        for info in pkgutil.walk_packages(package.__path__, prefix)
        if not any(part.startswith("_") for part in info.name.split("."))
    }


def defined_in(module: types.ModuleType) -> set[str]:
    """The public classes and functions ``module`` itself defines (not those it imports)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }


def exported_by(package: types.ModuleType) -> dict[str, object]:
    """What ``package`` exports: its public names that are not its submodules."""
    return {
        name: value
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_of_every_module_is_exported_or_listed(
    package: types.ModuleType,
) -> None:
    exported = exported_by(package)
    listed = MODULE_LEVEL[package.__name__]
    modules = modules_of(package)
    assert set(listed) <= set(modules), "a listed module does not exist"
    for name, module in modules.items():
        public = defined_in(module)
        here = listed.get(name, set())
        missing = public - set(exported) - here
        assert not missing, f"{module.__name__} defines {sorted(missing)}: export or list them"
        gone = here - public
        assert not gone, f"{module.__name__} no longer defines {sorted(gone)}: unlist them"
        both = here & set(exported)
        assert not both, f"{sorted(both)} of {module.__name__} are exported and listed"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_exported_name_is_defined_in_the_package(package: types.ModuleType) -> None:
    modules = modules_of(package).values()
    for name, value in exported_by(package).items():
        homes = [m.__name__ for m in modules if vars(m).get(name) is value]
        assert homes, f"{package.__name__}.{name} is not defined in any of its modules"
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ in homes, f"{name} comes from {value.__module__}"


def test_the_core_api_is_exported() -> None:
    for name in (
        "Topic",
        "Partition",
        "ConsumerGroup",
        "Consumer",
        "Record",
        "RecordBatch",
        "open_producer",
        "open_supervisor",
        "RingflowError",
        "BatchCodec",
        "Gateway",
        "open_remote_topic",
    ):
        assert name in exported_by(actors)
    for name in ("Topology", "Pipeline", "Registry", "TopologyError", "CheckpointStore"):
        assert name in exported_by(topology)


def test_every_error_derives_from_ringflow_error() -> None:
    errors = [
        value
        for package in PACKAGES
        for value in exported_by(package).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(errors) >= 8
    for error in errors:
        assert issubclass(error, actors.RingflowError)
