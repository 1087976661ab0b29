"""Kafka's classic consumer-group coordinator and the committed-offset store.

Theory of operation
-------------------
The coordinator is payload-agnostic (kafka-protocol.md §8): it keeps each member's
``protocol_metadata`` bytes, picks a protocol (assignor) every member supports, hands
all members' metadata to the elected leader in its JoinGroup answer, and relays the
leader's opaque assignments in SyncGroup.  States, as in Kafka's GroupMetadata::

    EMPTY --join--> PREPARING --all known members joined / rebalance timeout-->
    COMPLETING --leader's SyncGroup--> STABLE --join / leave / session expiry--> PREPARING

A JoinGroup is answered when every known member has (re)joined, or when the longest
rebalance timeout passes, and members that did not rejoin are dropped.  Kafka waits
``group.initial.rebalance.delay.ms`` (3 s) before the first rebalance; we do not (as
franz-go's kfake), so a group of N members may rebalance a few times while they join.
Members still in the group learn about a rebalance from Heartbeat/SyncGroup answering
REBALANCE_IN_PROGRESS.  Each member has a session timer reset by every request; expiry
removes it.  Nothing here awaits: answers go out through callbacks the connection
gives, and timers are ``loop.call_later`` handles.

Committed offsets live in memory and in ``OffsetStore``: one append-only JSON-lines
file, one line per committed partition, replayed at start-up (the last line for a key
wins; a torn last line is dropped).  OffsetCommit is answered after the fsync that covers
its lines, through the same Syncer as the partitions.  The file is never compacted in
this slice (a known limit: it grows with every commit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from kio.schema.errors import ErrorCode

from ...storage.syncer import Syncer

log = logging.getLogger("baedal.kafka")

JoinAnswer = Callable[[ErrorCode, "Group | None", str], None]
SyncAnswer = Callable[[ErrorCode, bytes], None]


class GroupState(Enum):
    EMPTY = "Empty"
    PREPARING = "PreparingRebalance"
    COMPLETING = "CompletingRebalance"
    STABLE = "Stable"


class Member:
    __slots__ = (
        "member_id",
        "client_id",
        "protocols",
        "session_timeout",
        "rebalance_timeout",
        "session_timer",
        "pending_join",
        "pending_sync",
        "assignment",
    )

    def __init__(self, member_id: str, client_id: str) -> None:
        self.member_id = member_id
        self.client_id = client_id
        self.protocols: list[tuple[str, bytes]] = []
        self.session_timeout = 10.0
        self.rebalance_timeout = 10.0
        self.session_timer: asyncio.TimerHandle | None = None
        self.pending_join: JoinAnswer | None = None
        self.pending_sync: SyncAnswer | None = None
        self.assignment = b""


class Group:
    def __init__(self, group_id: str, coordinator: GroupCoordinator) -> None:
        self.group_id = group_id
        self.coordinator = coordinator
        self.state = GroupState.EMPTY
        self.generation = 0
        self.protocol_type = ""
        self.protocol: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self._rebalance_timer: asyncio.TimerHandle | None = None

    # -- JoinGroup ------------------------------------------------------------------------

    def join(
        self,
        member_id: str,
        client_id: str,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        session_timeout: float,
        rebalance_timeout: float,
        answer: JoinAnswer,
    ) -> None:
        if self.members and protocol_type != self.protocol_type:
            answer(ErrorCode.inconsistent_group_protocol, None, member_id)
            return
        if self.members and not self._common_protocols(protocols):
            answer(ErrorCode.inconsistent_group_protocol, None, member_id)
            return
        if member_id and member_id not in self.members:
            answer(ErrorCode.unknown_member_id, None, member_id)
            return
        if not member_id:
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            self.members[member_id] = Member(member_id, client_id)
        member = self.members[member_id]
        if (
            protocols == member.protocols
            and member.pending_join is None
            and (
                self.state is GroupState.COMPLETING
                or (self.state is GroupState.STABLE and member_id != self.leader)
            )
        ):
            # Kafka's GroupCoordinator does the same: a follower that rejoins with
            # unchanged metadata (a late REBALANCE_IN_PROGRESS heartbeat makes clients
            # do that) gets the current generation back instead of starting another
            # rebalance, which would otherwise ping-pong between members forever.
            member.session_timeout = session_timeout
            member.rebalance_timeout = rebalance_timeout
            self.touch(member)
            answer(ErrorCode.none, self, member_id)
            return
        self.protocol_type = protocol_type
        member.protocols = protocols
        member.session_timeout = session_timeout
        member.rebalance_timeout = rebalance_timeout
        if member.pending_join is not None:  # a retry replaces the earlier request
            member.pending_join(ErrorCode.rebalance_in_progress, None, member_id)
        member.pending_join = answer
        self.touch(member)
        self._prepare_rebalance()
        self._maybe_complete_join()

    def _common_protocols(self, protocols: list[tuple[str, bytes]]) -> bool:
        names = {name for name, _ in protocols}
        return all(names & {name for name, _ in m.protocols} for m in self.members.values())

    def _prepare_rebalance(self) -> None:
        if self.state is GroupState.COMPLETING:
            # Members waiting in SyncGroup must rejoin (Kafka answers them so).
            for member in self.members.values():
                if member.pending_sync is not None:
                    member.pending_sync(ErrorCode.rebalance_in_progress, b"")
                    member.pending_sync = None
        if self.state is not GroupState.PREPARING:
            self.state = GroupState.PREPARING
            timeout = max((m.rebalance_timeout for m in self.members.values()), default=10.0)
            self._rebalance_timer = self.coordinator.loop.call_later(
                timeout, self._rebalance_timed_out
            )

    def _rebalance_timed_out(self) -> None:
        self._rebalance_timer = None
        for member in list(self.members.values()):
            if member.pending_join is None:
                self._remove(member)
        self._maybe_complete_join(force=True)

    def _maybe_complete_join(self, force: bool = False) -> None:
        if self.state is not GroupState.PREPARING:
            return
        if not self.members:
            self._cancel_rebalance_timer()
            self.state = GroupState.EMPTY
            return
        if not force and any(m.pending_join is None for m in self.members.values()):
            return
        self._cancel_rebalance_timer()
        self.generation += 1
        self.protocol = self._choose_protocol()
        if self.leader not in self.members:
            self.leader = next(iter(self.members))
        self.state = GroupState.COMPLETING
        for member in self.members.values():
            answer, member.pending_join = member.pending_join, None
            member.assignment = b""
            if answer is not None:
                answer(ErrorCode.none, self, member.member_id)

    def _choose_protocol(self) -> str:
        members = list(self.members.values())
        common = set.intersection(*({name for name, _ in m.protocols} for m in members))
        # The first in the leader's (or first member's) order that everybody supports.
        first = self.members.get(self.leader or "") or members[0]
        for name, _ in first.protocols:
            if name in common:
                return name
        return first.protocols[0][0]

    def metadata_for(self, member: Member) -> bytes:
        for name, data in member.protocols:
            if name == self.protocol:
                return data
        return b""

    def _cancel_rebalance_timer(self) -> None:
        if self._rebalance_timer is not None:
            self._rebalance_timer.cancel()
            self._rebalance_timer = None

    # -- SyncGroup / Heartbeat / LeaveGroup ------------------------------------------------

    def check(self, member_id: str, generation: int) -> ErrorCode:
        member = self.members.get(member_id)
        if member is None:
            return ErrorCode.unknown_member_id
        self.touch(member)
        if generation != self.generation:
            return ErrorCode.illegal_generation
        if self.state is GroupState.PREPARING:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def sync(
        self,
        member_id: str,
        generation: int,
        assignments: dict[str, bytes],
        answer: SyncAnswer,
    ) -> None:
        error = self.check(member_id, generation)
        if error is not ErrorCode.none:
            answer(error, b"")
            return
        member = self.members[member_id]
        if self.state is GroupState.STABLE:
            answer(ErrorCode.none, member.assignment)
            return
        member.pending_sync = answer
        if member_id == self.leader:
            for target in self.members.values():
                target.assignment = assignments.get(target.member_id, b"")
            self.state = GroupState.STABLE
            for target in self.members.values():
                if target.pending_sync is not None:
                    reply, target.pending_sync = target.pending_sync, None
                    reply(ErrorCode.none, target.assignment)

    def leave(self, member_id: str) -> ErrorCode:
        member = self.members.get(member_id)
        if member is None:
            return ErrorCode.unknown_member_id
        self._remove(member)
        if self.members:
            self._prepare_rebalance()
            self._maybe_complete_join()
        else:
            self._cancel_rebalance_timer()
            self.state = GroupState.EMPTY
        return ErrorCode.none

    def _remove(self, member: Member) -> None:
        self.members.pop(member.member_id, None)
        if member.session_timer is not None:
            member.session_timer.cancel()
        if member.pending_join is not None:
            member.pending_join(ErrorCode.unknown_member_id, None, member.member_id)
        if member.pending_sync is not None:
            member.pending_sync(ErrorCode.unknown_member_id, b"")
        if self.leader == member.member_id:
            self.leader = None

    def touch(self, member: Member) -> None:
        if member.session_timer is not None:
            member.session_timer.cancel()
        member.session_timer = self.coordinator.loop.call_later(
            member.session_timeout, self._expire, member.member_id
        )

    def _expire(self, member_id: str) -> None:
        if member_id in self.members:
            log.info("kafka group %s: member %s session expired", self.group_id, member_id)
            self.leave(member_id)


class GroupCoordinator:
    def __init__(self, offsets: OffsetStore, loop: asyncio.AbstractEventLoop) -> None:
        self.offsets = offsets
        self.loop = loop
        self.groups: dict[str, Group] = {}

    def group(self, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id, self)
        return group

    def close(self) -> None:
        for group in self.groups.values():
            group._cancel_rebalance_timer()
            for member in group.members.values():
                if member.session_timer is not None:
                    member.session_timer.cancel()


class OffsetStore:
    """Committed offsets: (group, topic, partition) -> (offset, metadata), on disk."""

    def __init__(self, path: Path, syncer: Syncer) -> None:
        self.path = path
        self.syncer = syncer
        self.committed: dict[tuple[str, str, int], tuple[int, str | None]] = {}
        self._file: Any = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good = 0
        if self.path.exists():
            with open(self.path, "rb") as file:
                for line in file:
                    if not line.endswith(b"\n"):
                        break  # torn by a crash mid-write: never acknowledged
                    try:
                        group, topic, partition, offset, metadata = json.loads(line)
                    except (ValueError, TypeError):
                        break
                    if topic is None:  # DeleteGroups' tombstone: the group's offsets go
                        self._forget(group)
                    else:
                        self.committed[(group, topic, partition)] = (offset, metadata)
                    good += len(line)
            if good != self.path.stat().st_size:
                log.warning(
                    "kafka offsets: dropped %d byte(s) of torn tail", self.path.stat().st_size - good
                )
                os.truncate(self.path, good)

    def _forget(self, group: str) -> None:
        for key in [key for key in self.committed if key[0] == group]:
            del self.committed[key]

    def delete_group(self, group: str) -> None:
        """Forget every committed offset of ``group`` (a tombstone line on disk)."""
        self._forget(group)
        self._write(group, None, None, None, None)

    def commit(self, group: str, topic: str, partition: int, offset: int, metadata: str | None) -> None:
        self.committed[(group, topic, partition)] = (offset, metadata)
        self._write(group, topic, partition, offset, metadata)

    def _write(self, group: str, topic: Any, partition: Any, offset: Any, metadata: Any) -> None:
        if self._file is None:  # opened on first use: brokers without groups hold no fd
            self._file = open(self.path, "ab")  # noqa: SIM115  # held open for appends
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the new file's name must survive a crash too
            finally:
                os.close(directory)
        self._file.write(
            json.dumps([group, topic, partition, offset, metadata], separators=(",", ":")).encode()
            + b"\n"
        )
        self.syncer.mark_dirty(self._file)

    def get(self, group: str, topic: str, partition: int) -> tuple[int, str | None] | None:
        return self.committed.get((group, topic, partition))

    def for_group(self, group: str) -> dict[str, dict[int, tuple[int, str | None]]]:
        found: dict[str, dict[int, tuple[int, str | None]]] = {}
        for (owner, topic, partition), value in self.committed.items():
            if owner == group:
                found.setdefault(topic, {})[partition] = value
        return found

    def close(self) -> None:
        if self._file is not None:
            self.syncer.forget(self._file)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
