"""Few-shot tasks for a real language model: the data, the prompts, and how answers are scored.

Every task is a relation written one example per line, ``"<relation> <item>: <answer>\\n"``,
and a prompt is a few demonstrations followed by the query line ``"<relation> <item>:"``:

    capital of France: Paris
    capital of Japan: Tokyo
    capital of Egypt:                 -> " Cairo"

Items and demonstration answers are single tokens (with their leading space) in the model's
tokenizer, so all prompts of a task have the same token layout: the query line is the last
``K`` tokens, the item sits at the same position in every prompt, and the context (the
demonstrations) is a whole number of tokens per example. :func:`icl_lib.task_prompts` checks this and
refuses data that breaks it. An answer is scored by its *first* token: the model's greedy next
token after the query line must be the first token of the answer (or of one of the accepted
alternatives, written ``"young/new"``).

Four tasks, all data written here (nothing is downloaded): ``capitals`` (country → capital),
``antonyms``, ``colours`` (object → colour) share one set of demonstrations across their
queries; ``made_up`` is an arbitrary animal → object-word mapping that no model can know, so
each query comes with its own demonstrations, which contain the query's own pair (the answer
must be retrieved from the context).
"""

from __future__ import annotations

from collections.abc import Sequence

import random
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..core.checks import check_rows

__all__ = ["FewShotTask", "TaskPrompts", "TASKS", "task_prompts", "answer_accuracy"]


@dataclass(frozen=True)
class FewShotTask:
    """A relation, its demonstrations and its held-out queries.

    Attributes:
        name: short name.
        relation: the words before the item on every line (``"capital of"``).
        demonstrations: ``(item, answer)`` pairs shown before every query (``n`` of them), or,
            for a retrieval task, the pool the per-query demonstrations are drawn from.
        queries: held-out ``(item, answer)`` pairs; an answer may list alternatives, ``"a/b"``.
        retrieval: each query's demonstrations are drawn per query and contain its own pair.
    """

    name: str
    relation: str
    demonstrations: tuple[tuple[str, str], ...]
    queries: tuple[tuple[str, str], ...]
    retrieval: bool = False

    def line(self, item: str, answer: str | None = None) -> str:
        """One example line (with its newline), or the query line when ``answer`` is None."""
        return f"{self.relation} {item}:" if answer is None else f"{self.relation} {item}: {answer}\n"

    def demonstrations_for(self, query: int, n_examples: int) -> list[tuple[str, str]]:
        """The ``n_examples`` demonstrations shown before query ``query``.

        Fixed tasks: the first ``n_examples`` demonstrations. Retrieval tasks: the query's own
        pair and ``n_examples − 1`` others from the pool, in an order fixed by the query index.
        """
        if not self.retrieval:
            return list(self.demonstrations[:n_examples])
        if n_examples == 0:
            return []
        rng = random.Random(query)
        others = [pair for pair in self.demonstrations if pair[0] != self.queries[query][0]]
        shown = rng.sample(others, n_examples - 1) + [self.queries[query]]
        rng.shuffle(shown)
        return shown

    def prompt(self, query: int, n_examples: int) -> str:
        """The prompt text for query ``query`` after ``n_examples`` demonstrations."""
        shown = "".join(self.line(item, answer) for item, answer in self.demonstrations_for(query, n_examples))
        return shown + self.line(self.queries[query][0])


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(entry.split(" ")) for entry in text.split(", "))


CAPITALS = FewShotTask(
    name="capitals",
    relation="capital of",
    demonstrations=_pairs("France Paris, Japan Tokyo, Germany Berlin, Peru Lima"),
    queries=_pairs(
        "Italy Rome, Spain Madrid, China Beijing, Russia Moscow, Canada Ottawa, Egypt Cairo, Greece Athens, "
        "Sweden Stockholm, Norway Oslo, Poland Warsaw, Austria Vienna, Portugal Lisbon, Ireland Dublin, "
        "Kenya Nairobi, Cuba Havana, Iran Tehran, Iraq Baghdad, Australia Canberra, Belgium Brussels, "
        "Netherlands Amsterdam, Denmark Copenhagen, Finland Helsinki, Hungary Budapest, Syria Damascus, "
        "Afghanistan Kabul, Philippines Manila, Switzerland Bern, Bulgaria Sofia, Tunisia Tunis, Chile Santiago, "
        "Argentina Buenos, Scotland Edinburgh, England London, Wales Cardiff, Turkey Ankara, Thailand Bangkok, "
        "Vietnam Hanoi, Lebanon Beirut, Indonesia Jakarta, Romania Bucharest"
    ),
)

ANTONYMS = FewShotTask(
    name="antonyms",
    relation="opposite of",
    demonstrations=_pairs("hot cold, big small, fast slow, happy sad"),
    queries=_pairs(
        "open closed, tall short, early late, rich poor, strong weak, wet dry, full empty, high low, good bad, "
        "black white, day night, love hate, win lose/loss, push pull, true false, alive dead, first last, "
        "clean dirty, cheap expensive, thick thin, loud quiet/soft, deep shallow, inside outside, north south, "
        "east west, left right, buy sell, before after, above below, increase decrease, up down, young old, "
        "wide narrow, safe dangerous/unsafe, friend enemy, war peace, question answer, always never, "
        "sharp dull/blunt, positive negative"
    ),
)

COLOURS = FewShotTask(
    name="colours",
    relation="colour of",
    demonstrations=_pairs("grass green, sky blue, snow white, coal black"),
    queries=_pairs(
        "blood red, banana yellow, lemon yellow, tomato red, carrot orange, milk white, cherry red, leaf green, "
        "frog green, crow black, pumpkin orange, strawberry red, ocean blue, sun yellow, chocolate brown, "
        "salt white, lime green, charcoal black, cucumber green, corn yellow, rose red, cloud white, "
        "eggplant purple, plum purple, coffee brown, pig pink, ink black, gold gold/yellow, elephant grey/gray, "
        "mouse grey/gray, lettuce green, mustard yellow, paper white, fire red/orange, broccoli green, "
        "peach orange/pink, grape purple, cream white, olive green, soil brown"
    ),
)

_ANIMALS = (
    "dog cat horse cow sheep goat pig lion tiger bear wolf fox rabbit mouse deer camel zebra monkey elephant "
    "giraffe donkey squirrel rat shark salmon trout tuna whale dolphin octopus crab lobster seal eel owl "
    "eagle duck goose hen parrot"
).split()
_OBJECTS = (
    "window river candle garden pocket ladder mirror button basket hammer pillow wallet bottle carpet engine "
    "kettle lantern magnet needle pencil rocket saddle tunnel violin wagon anchor blanket cactus dragon feather "
    "helmet island jacket kitchen lemon marble towel orchestra piano quilt"
).split()
_MAPPING = tuple(zip(_ANIMALS, random.Random(2025).sample(_OBJECTS, len(_OBJECTS))))

MADE_UP = FewShotTask(
    name="made_up",
    relation="code of",
    demonstrations=_MAPPING,
    queries=_MAPPING,
    retrieval=True,
)

TASKS: dict[str, FewShotTask] = {task.name: task for task in (CAPITALS, ANTONYMS, COLOURS, MADE_UP)}


@dataclass(frozen=True)
class TaskPrompts:
    """The tokenised prompts of one task, one row per query, all with the same layout.

    Attributes:
        input_ids: ``(Q, T)`` token ids (``torch.long``).
        n_examples: demonstrations per prompt.
        kept_tokens: ``K``, the number of tokens of the query line (the last ``K`` of every row).
        example_tokens: tokens per demonstration line; the context before the query line holds
            ``n_examples · example_tokens`` tokens.
        item_position: index, within the query line, of the item's token.
        answers: for each query, the accepted first tokens of its answer (a tuple of ids).
    """

    input_ids: Tensor
    n_examples: int
    kept_tokens: int
    example_tokens: int
    item_position: int
    answers: tuple[tuple[int, ...], ...]

    @property
    def context_lengths(self) -> tuple[int, ...]:
        """The context length, in tokens, after ``0, 1, …, n_examples`` demonstrations."""
        return tuple(j * self.example_tokens for j in range(self.n_examples + 1))

    def rows(self, index: Tensor) -> TaskPrompts:
        """The prompts ``index`` (a 1-d index tensor of queries), with their answers."""
        index = check_rows(index, "query rows")
        return replace(
            self, input_ids=self.input_ids[index], answers=tuple(self.answers[i] for i in index.tolist())
        )


def _single_token(tokenizer, word: str, what: str) -> int:
    ids = tokenizer(" " + word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{what} {word!r} is {len(ids)} tokens (with its leading space); this task needs one")
    return ids[0]


def task_prompts(task: FewShotTask, tokenizer, n_examples: int, n_queries: int | None = None) -> TaskPrompts:
    """Tokenise the prompts of the first ``n_queries`` queries (default all) after ``n_examples``
    demonstrations.

    Raises ``ValueError`` if an item or a demonstration answer is not a single token, or if the
    prompts do not share one layout (then the positions of the kept tokens would not align).
    """
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 0:
        raise ValueError(f"n_examples must be a non-negative int, got {n_examples!r}")
    pool = len(task.demonstrations)
    if n_examples > pool:
        raise ValueError(f"task {task.name!r} has {pool} demonstrations; asked for {n_examples}")
    for item, answer in task.demonstrations[: (pool if task.retrieval else n_examples)]:
        _single_token(tokenizer, item, "demonstration item")
        _single_token(tokenizer, answer, "demonstration answer")
    n = len(task.queries) if n_queries is None else n_queries
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(task.queries):
        raise ValueError(f"n_queries must be an int in [1, {len(task.queries)}], got {n_queries!r}")
    queries = task.queries[:n]
    rows, answers = [], []
    for q, (item, answer) in enumerate(queries):
        _single_token(tokenizer, item, "query item")
        rows.append(tokenizer(task.prompt(q, n_examples), add_special_tokens=False).input_ids)
        answers.append(tuple(dict.fromkeys(tokenizer(" " + a, add_special_tokens=False).input_ids[0]
                                           for a in answer.split("/"))))
    query_line = [tokenizer(task.line(item), add_special_tokens=False).input_ids for item, _ in queries]
    example_line = tokenizer(task.line(*task.demonstrations[0]), add_special_tokens=False).input_ids
    kept, per_example = len(query_line[0]), len(example_line)
    if len({len(r) for r in rows}) != 1 or len({len(line) for line in query_line}) != 1:
        raise ValueError(f"the prompts of task {task.name!r} do not share one token layout")
    if len(rows[0]) != n_examples * per_example + kept:
        raise ValueError(f"task {task.name!r}: the demonstration lines do not tokenise to {per_example} tokens each")
    for row, line in zip(rows, query_line):
        if row[-kept:] != line:
            raise ValueError(f"task {task.name!r}: the query line does not tokenise the same inside the prompt")
    item_position = kept - 2  # "... <item>:" : the item is the token before the colon
    for line, (item, _) in zip(query_line, queries):
        if line[item_position] != _single_token(tokenizer, item, "query item"):
            raise ValueError(f"task {task.name!r}: in {task.line(item)!r} the item is not the token before the colon")
    return TaskPrompts(
        input_ids=torch.tensor(rows, dtype=torch.long),
        n_examples=n_examples,
        kept_tokens=kept,
        example_tokens=per_example,
        item_position=item_position,
        answers=tuple(answers),
    )


def answer_accuracy(logits: Tensor, prompts: TaskPrompts | Sequence[Sequence[int]]) -> Tensor:
    """Whether each query's greedy next token is an accepted first token of its answer.

    Args:
        logits: ``(Q, vocab)`` at the last token of each prompt.
        prompts: the task's :class:`icl_lib.experiments.fewshot.TaskPrompts` (or any prompts with
            an ``answers`` field, such as :class:`icl_lib.experiments.thought_patches.ThoughtPrompts`),
            or the answers themselves: per query, the accepted first tokens.

    Returns:
        ``(Q,)`` bool.
    """
    answers = getattr(prompts, "answers", prompts)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != len(answers):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be (Q, vocab) with Q = {len(answers)} queries, got {got}")
    guess = logits.argmax(-1).tolist()
    return torch.tensor([g in accepted for g, accepted in zip(guess, answers)], dtype=torch.bool)
