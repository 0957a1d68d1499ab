"""Live Q&A for seminars: the audience asks and upvotes, the host picks and dismisses.

A question's id is the seq of its ``ask`` event, so every client and every
wake-up agrees on it without a counter in the state. ``upvote`` counts once
per user per question (a second one is refused, not silently ignored, so a
client can tell). ``pick`` and ``dismiss`` need a host token: ``pick`` marks
the question being answered now (the previous one becomes answered),
``dismiss`` takes a question off the board.

The snapshot is the open questions by votes (most first, then oldest first),
the one picked now, and the answered ones; dismissed questions are dropped
from it but kept in the state, so a late upvote still gets a clear refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind, durable
from rooms.schema import Int, Obj, Str

# Longest question, in characters.
QUESTION_MAX_CHARS = 500
# Open questions a joining client is shown (the top ones by votes); a spike of
# thousands of questions must not make every welcome frame megabytes long.
SNAPSHOT_OPEN_QUESTIONS = 200
SNAPSHOT_ANSWERED_QUESTIONS = 50

OPEN = "open"
PICKED = "picked"
ANSWERED = "answered"
DISMISSED = "dismissed"

QUESTION_REF = Obj({"question": Int(1, 2**53)})


@dataclass(slots=True)
class Question:
    id: int
    user_id: str
    text: str
    ts: int
    voters: set[str] = field(default_factory=set)
    status: str = OPEN

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "userId": self.user_id, "text": self.text, "ts": self.ts, "votes": len(self.voters), "status": self.status}


@dataclass(slots=True)
class Board:
    questions: dict[int, Question] = field(default_factory=dict)
    picked: int | None = None


class QA(RoomKind):
    name = "qa"
    messages = {
        "ask": durable(Obj({"text": Str(1, QUESTION_MAX_CHARS)}), max_payload_bytes=4 * QUESTION_MAX_CHARS + 64),
        "upvote": durable(QUESTION_REF, max_payload_bytes=64),
        "pick": durable(QUESTION_REF, max_payload_bytes=64, scope="host"),
        "dismiss": durable(QUESTION_REF, max_payload_bytes=64, scope="host"),
    }

    def initial_state(self) -> Board:
        return Board()

    def check(self, state: Board, message: Incoming) -> None:
        if message.type == "ask":
            if not message.payload["text"].strip():
                raise Reject("ask: the question is blank")
            return
        question = state.questions.get(message.payload["question"])
        if question is None:
            raise Reject(f"{message.type}: no such question")
        if question.status == DISMISSED:
            raise Reject(f"{message.type}: the question was dismissed")
        if message.type == "upvote":
            if message.user_id in question.voters:
                raise Reject("upvote: you already upvoted this question")
        elif message.type == "pick":
            if question.status != OPEN:
                raise Reject(f"pick: the question is {question.status}")

    def fold(self, state: Board, event: DurableEvent) -> Board:
        if event.type == "ask":
            state.questions[event.seq] = Question(event.seq, event.user_id, event.payload["text"], event.ts)
            return state
        question = state.questions.get(event.payload["question"])
        if question is None:  # pragma: no cover - check refused it; a fold never raises
            return state
        if event.type == "upvote":
            question.voters.add(event.user_id)
        elif event.type == "pick":
            self._finish_picked(state)
            question.status = PICKED
            state.picked = question.id
        elif event.type == "dismiss":
            if state.picked == question.id:
                state.picked = None
            question.status = DISMISSED
        return state

    @staticmethod
    def _finish_picked(state: Board) -> None:
        if state.picked is not None:
            state.questions[state.picked].status = ANSWERED
            state.picked = None

    def snapshot(self, state: Board) -> dict[str, Any]:
        open_ = [q for q in state.questions.values() if q.status == OPEN]
        open_.sort(key=lambda q: (-len(q.voters), q.id))
        answered = [q for q in state.questions.values() if q.status == ANSWERED]
        picked = state.questions[state.picked].public() if state.picked is not None else None
        return {
            "questions": [q.public() for q in open_[:SNAPSHOT_OPEN_QUESTIONS]],
            "openCount": len(open_),
            "picked": picked,
            "answered": [q.public() for q in answered[-SNAPSHOT_ANSWERED_QUESTIONS:]],
        }

    def dump_state(self, state: Board) -> dict[str, Any]:
        return {
            "questions": [
                {"id": q.id, "userId": q.user_id, "text": q.text, "ts": q.ts, "voters": sorted(q.voters), "status": q.status}
                for q in state.questions.values()
            ],
            "picked": state.picked,
        }

    def load_state(self, data: dict[str, Any]) -> Board:
        questions = {
            q["id"]: Question(q["id"], q["userId"], q["text"], q["ts"], set(q["voters"]), q["status"])
            for q in data.get("questions", [])
        }
        return Board(questions, data.get("picked"))
