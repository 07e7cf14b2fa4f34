"""Multi-hop retrieval (workflows.multihop) and supporting-paragraph recall per hop (agentflow.eval.hop_recall)."""

from __future__ import annotations

import pytest

from agentflow import Completion, ConfigError, Usage
from agentflow.eval import Example, HopRecall, Paragraph, bridge_title, hop_recall, top_paragraphs
from agentflow.testing import FunctionModel, ScriptedModel
from workflows import QADeps, QAState, decompose
from workflows.multihop import BRIDGE, build, hop_findings, hops_read, next_hop, retriever

FILM = Paragraph(
    "Kiss and Tell (1945 film)",
    "Kiss and Tell is a 1945 American comedy film starring Shirley Temple as Corliss Archer.",
    is_supporting=True,
)
ACTRESS = Paragraph(
    "Shirley Temple",
    "Shirley Temple Black was an American actress and diplomat who served as Chief of Protocol.",
    is_supporting=True,
)
WALDO = Paragraph("Janet Waldo", "Janet Waldo was an American radio actress who voiced teenage girls.")
RADIO = Paragraph("Meet Corliss Archer", "Meet Corliss Archer is a radio program about Corliss Archer, a girl.")
TREASURER = Paragraph("Lord High Treasurer", "The Lord High Treasurer was an English government position.")
PARAS = [RADIO, ACTRESS, WALDO, FILM, TREASURER]
Q = "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?"


def _state() -> QAState:
    return QAState(question=Q, paragraphs=PARAS)


def test_the_second_hop_follows_what_the_first_found_and_skips_what_was_read() -> None:
    assert next_hop(Q, PARAS, [FILM], ["Shirley Temple"], 1) == [ACTRESS]
    assert next_hop(Q, PARAS, [FILM], ["Janet Waldo"], 1) == [WALDO]  # the finding steers the hop
    assert FILM not in next_hop(Q, PARAS, [FILM], [], 4)
    # With nothing found, the second hop continues the first hop's ranking.
    assert next_hop(Q, PARAS, [FILM], [], 2) == top_paragraphs(Q, PARAS, 3)[1:]
    assert next_hop(Q, PARAS, PARAS, ["Shirley Temple"], 2) == []  # nothing left to read


async def test_two_hops_read_the_bridge_paragraph_with_one_model_call() -> None:
    model = ScriptedModel(["Shirley Temple."])
    state, record = await retriever(k=1, next_k=1).run(_state(), deps=QADeps(model=model))
    assert record.nodes == ["hop", "bridge", "hop"]
    assert hops_read(state) == [["Kiss and Tell (1945 film)"], ["Shirley Temple"]]
    assert hop_findings(state) == ["Shirley Temple"]
    assert state.notes[0] == 'hop 1 read: ["Kiss and Tell (1945 film)"]'
    # The union, in the paragraphs' original order.
    assert state.context == [ACTRESS, FILM]
    (req,) = model.requests
    assert req.messages[0].content == BRIDGE
    user = req.messages[-1].content
    assert "Title: Kiss and Tell (1945 film)" in user and "Title: Shirley Temple" not in user
    assert user.rstrip().endswith(f"Question: {Q}\nAnswer:")


async def test_two_hops_read_the_second_paragraph_single_shot_misses_at_the_same_count() -> None:
    q = "Which city was the director of the 2014 film Big Stone Gap born in?"
    paras = [
        Paragraph(
            "Big Stone Gap (film)", "Big Stone Gap is a 2014 comedy film by Adriana Trigiani.", is_supporting=True
        ),
        Paragraph("Adriana Trigiani", "Adriana Trigiani is an Italian American author, born in New York City.", True),
        Paragraph(
            "Big Stone Gap, Virginia",
            "Big Stone Gap is a town in Virginia. The city was a 2014 film location; many directors were born there.",
        ),
        Paragraph("Wise County, Virginia", "Wise County is a county in Virginia with the city of Big Stone Gap."),
    ]
    example = _example(q, paras)
    single = [[top_paragraphs(q, paras, 2)]]
    state, _ = await retriever(k=1, next_k=1).run(
        QAState(question=q, paragraphs=paras), deps=QADeps(model=ScriptedModel(["Adriana Trigiani"]))
    )
    assert hop_recall([example], single)[-1].recall == 0.0
    assert [r.recall for r in hop_recall([example], [hops_read(state)])] == [0.0, 1.0]


async def test_build_answers_from_everything_read() -> None:
    model = ScriptedModel(["Shirley Temple", "Chief of Protocol"])
    state, record = await build().run(_state(), deps=QADeps(model=model))
    assert state.answer == "Chief of Protocol"
    assert record.nodes[-2:] == ["read/answer", "read"]
    answer_user = model.requests[1].messages[-1].content
    assert "Title: Kiss and Tell (1945 film)" in answer_user and "Title: Shirley Temple" in answer_user
    assert "Title: Janet Waldo" not in answer_user
    assert hops_read(state) == [["Kiss and Tell (1945 film)"], ["Shirley Temple"]]  # notes kept after the reader


async def test_a_reader_that_counts_its_notes_does_not_see_the_hop_notes() -> None:
    # decompose answers sub-question i = len(notes): with the hop notes in view it would skip its own.
    plan = decompose.Plan(subquestions=["Who played Corliss Archer?", "What position did #1 hold?"])
    planned = Completion(plan.model_dump_json(), "m", "stop", Usage(1, 10, 10), parsed=plan)
    model = ScriptedModel(["Shirley Temple", planned, "Shirley Temple", "Chief of Protocol", "Chief of Protocol"])
    state, _ = await build(k=1, next_k=1, reader=decompose.build()).run(_state(), deps=QADeps(model=model))
    assert len(model.requests) == 5
    assert state.answer == "Chief of Protocol"
    assert state.notes[-1] == "What position did Shirley Temple hold? -> Chief of Protocol"
    assert len(hops_read(state)) == 2


async def test_hops_are_bounded_and_later_bridges_see_earlier_findings() -> None:
    model = ScriptedModel(["Shirley Temple", "Chief of Protocol"])
    state, _ = await retriever(k=1, next_k=1, hops=3).run(_state(), deps=QADeps(model=model))
    assert len(model.requests) == 2 and len(hops_read(state)) == 3
    assert "Found so far: Shirley Temple" in model.requests[1].messages[-1].content
    assert "Found so far" not in model.requests[0].messages[-1].content

    silent = ScriptedModel([])
    state, _ = await retriever(k=2, hops=1).run(_state(), deps=QADeps(model=silent))
    assert silent.requests == [] and len(hops_read(state)) == 1 and len(state.context or []) == 2


async def test_an_empty_bridge_answer_still_reads_the_next_best_paragraph() -> None:
    model = FunctionModel(lambda _: "")
    state, _ = await retriever(k=1, next_k=2).run(_state(), deps=QADeps(model=model))
    first, second = hops_read(state)
    assert len(second) == 2 and not set(first) & set(second)
    assert hop_findings(state) == [""]


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"next_k": 0}, {"hops": 0}, {"hops": 5}])
def test_bad_settings_are_rejected_at_build_time(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="got"):
        retriever(k=kwargs.get("k", 2), next_k=kwargs.get("next_k", 1), hops=kwargs.get("hops", 2))


def _example(question: str, paragraphs: list[Paragraph], type_: str = "bridge") -> Example:
    return Example(id=question, question=question, answer="x", paragraphs=tuple(paragraphs), type=type_)


def test_hop_recall_counts_what_was_read_so_far_after_each_hop() -> None:
    both = _example(Q, PARAS)
    no_gold = _example("Where?", [WALDO])
    reads: list[list[list[Paragraph | str]]] = [
        [[FILM, RADIO], ["Shirley Temple"]],  # paragraphs or titles
        [["Janet Waldo"]],
    ]
    assert hop_recall([both, no_gold], reads) == [HopRecall(1, 2.0, 0.0, 0.5, 1), HopRecall(2, 3.0, 1.0, 1.0, 1)]
    # An example that stopped after one hop keeps what it had read; another that missed stays at 0.
    stopped = hop_recall([both, both], [[[FILM, ACTRESS]], [[FILM], [TREASURER]]])
    assert [r.recall for r in stopped] == [0.5, 0.5] and stopped[1].partial == 0.75
    assert hop_recall([no_gold], [[["Janet Waldo"]]]) == []
    with pytest.raises(ConfigError, match="one list of hops"):
        hop_recall([both], [])


def test_the_oracle_bridge_is_the_supporting_paragraph_the_question_does_not_name() -> None:
    assert bridge_title(_example(Q, PARAS)) == "Shirley Temple"
    # Neither title named: the one named in the other supporting paragraph is the bridge.
    linked = _example("Which office did the star of a 1945 comedy hold?", PARAS)
    assert bridge_title(linked) == "Shirley Temple"
    # A comparison names both: the one plain BM25 ranks lower for the question.
    a = Paragraph("Ed Wood", "Ed Wood was an American filmmaker.", is_supporting=True)
    b = Paragraph("Scott Derrickson", "Scott Derrickson is an American director, born in Denver.", is_supporting=True)
    comparison = _example("Were Scott Derrickson and Ed Wood born in Denver?", [a, b, WALDO], "comparison")
    assert bridge_title(comparison) == "Ed Wood"
    assert bridge_title(_example("Where?", [WALDO])) is None
