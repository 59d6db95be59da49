"""The plain-file limit: framed records appended to one file, with no queue around them.

It has only the batched produce scenario, which reuses the plain-file
baseline of bench.scenarios: records of a 4-byte length prefix and the value,
`batch_size` records per `write` call.
"""

from __future__ import annotations

from pathlib import Path

from bench.peers.base import PRODUCE_BATCHED, Durability, Peer, QueueClient, Workload
from bench.scenarios import Sample, Settings, write_framed_records


class PlainFilePeer(Peer):
    name = "plain file"

    def describe(self, durability: Durability, workload: Workload) -> str:
        if durability == "always":
            return f"os.fsync after each write of {workload.batch_size} records"
        return f"writes of {workload.batch_size} records, no fsync"

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        raise NotImplementedError("the plain-file peer has no queue; it runs only the batched produce scenario")

    def supports(self, scenario: str) -> bool:
        return scenario == PRODUCE_BATCHED

    async def run(self, scenario: str, directory: Path, durability: Durability, workload: Workload) -> Sample | None:
        if not self.supports(scenario):
            return None
        settings = Settings(
            messages=workload.messages,
            per_call_messages=workload.per_call_messages,
            receive_one_messages=workload.receive_one_messages,
            value_bytes=workload.value_bytes,
            batch_size=workload.batch_size,
            fsync=durability,
            seed=1,
            runs=workload.runs,
        )
        return write_framed_records(directory / "plain.log", settings, fsync=durability == "always")
