"""Reading every supported format from real files into exact Examples; detection by content; robustness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densetune.data import jsonrecords
from densetune.data.formats import ReadStats, detect_format, expand_paths, iter_examples
from densetune.data.records import Doc, Example, text_doc_id
from densetune.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))


def tdoc(text: str, **kw) -> Doc:
    """An inline document as readers produce it: id derived from the text."""
    return Doc(id=kw.pop("id", text_doc_id(text)), text=text, **kw)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, value, indent: int | None = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=indent), encoding="utf-8")
    return path


def make_corpus(directory: Path, corpus_id: str, docs: dict[str, str], **meta) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "merlin_metadata.json", {"class": "TextQADataset", "corpus_id": corpus_id, **meta})
    write_jsonl(directory / "docs.jsonl", [{"id": k, "text": v} for k, v in docs.items()])
    return directory


def make_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    write_jsonl(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Mars", "text": "Mars is red.", "metadata": {}},
            {"_id": "d2", "title": "", "text": "Venus is hot."},
            {"_id": "d3", "title": "Moon", "text": "The Moon orbits Earth."},
        ],
    )
    write_jsonl(
        root / "queries.jsonl",
        [
            {"_id": "q1", "text": "red planet"},
            {"_id": "q2", "text": "hot planet"},
            {"_id": "q3", "text": "x"},
        ],
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_bytes(
        b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\t2\r\nq1\td3\t1\r\nq3\td2\t0\r\n"
    )
    return root


# ---------------------------------------------------------------------------------------------------------
# Each format, read from a real file, gives exact Examples


def test_nemo_inline_jsonl_example_file():
    path = EXAMPLES / "nemo_inline.jsonl"
    got = list(iter_examples(path))
    src = str(path)
    vaccines = "Vaccines expose the immune system to a harmless form or part of a pathogen so it produces antibodies and memory cells without causing the disease."
    assert got[2] == Example(
        query_id="nemo_inline.jsonl:2",
        query="How do vaccines train the immune system?",
        positives=[tdoc(vaccines)],
        negatives=[],
        task="nemo_inline",
        source=f"{src}:3",
    )
    assert [e.query_id for e in got] == [
        "nemo_inline.jsonl:0",
        "nemo_inline.jsonl:1",
        "nemo_inline.jsonl:2",
        "py-1",
    ]
    assert got[1].query == "Who wrote the novel Middlemarch?"  # "question" alias
    assert got[1].negatives == [
        tdoc("Wuthering Heights is the only novel by Emily Bronte, published in 1847.")
    ]
    assert [d.text[:14] for d in got[3].negatives] == ["The ball pytho", "Monty Python w"]
    assert all(e.corpus_id == "__inline__" for e in got)


def test_nemo_inline_dict_docs_and_json_list(tmp_path):
    records = [
        {
            "question": "q0",
            "pos_doc": [{"text": "p0", "image": "img/0.png", "nr_ocr": 3, "title": "T"}],
            "neg_doc": [{"text": "n0", "id": 17}, "n1"],
        },
        {"query": "q1", "pos_doc": "p1", "neg_doc": None, "question_id": "Q1"},
    ]
    path = write_json(
        tmp_path / "inline.json", records
    )  # a .json list: NeMo routes it by suffix and fails; we read it
    assert detect_format(path) == "nemo-inline"
    got = list(iter_examples(path))
    assert got == [
        Example(
            query_id="inline.json:0",
            query="q0",
            positives=[tdoc("p0", image="img/0.png", title="T", extra={"nr_ocr": 3})],
            negatives=[Doc(id="17", text="n0"), tdoc("n1")],
            task="inline",
            source=f"{path}:2",
        ),
        Example(query_id="Q1", query="q1", positives=[tdoc("p1")], task="inline", source=f"{path}:20"),
    ]


def test_single_json_record(tmp_path):
    path = write_json(tmp_path / "one.json", {"query": "q", "pos_doc": "p", "neg_doc": ["n"]})
    assert detect_format(path) == "nemo-inline"
    assert list(iter_examples(path)) == [
        Example(
            query_id="one.json:0",
            query="q",
            positives=[tdoc("p")],
            negatives=[tdoc("n")],
            task="one",
            source=f"{path}:1",
        )
    ]


def test_sbert_json_list(tmp_path):
    path = write_json(tmp_path / "sbert.json", [{"query": "q", "pos_doc": "p", "neg_doc": ["n1", "n2"]}])
    assert detect_format(path) == "sbert"
    assert list(iter_examples(path)) == [
        Example(
            query_id="sbert.json:0",
            query="q",
            positives=[tdoc("p")],
            negatives=[tdoc("n1"), tdoc("n2")],
            task="sbert",
            source=f"{path}:2",
        )
    ]


def test_gpt_embedding_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "gpt.jsonl",
        [
            {
                "query": "What did?",
                "pos_doc": "Morning.",
                "neg_doc": "Even though.",
                "query_id": "q103151",
                "doc_id": "d14755",
            }
        ],
    )
    assert detect_format(path) == "gpt-embedding"
    assert list(iter_examples(path)) == [
        Example(
            query_id="q103151",
            query="What did?",
            positives=[Doc(id="d14755", text="Morning.")],
            negatives=[tdoc("Even though.")],
            task="gpt",
            source=f"{path}:1",
        )
    ]


def test_flag_example_file():
    path = EXAMPLES / "flag.jsonl"
    assert detect_format(path) == "flag"
    got = list(iter_examples(path))
    assert got[0] == Example(
        query_id="flag.jsonl:0",
        query="how long does it take to boil an egg",
        positives=[
            tdoc(
                "A soft-boiled egg takes about 6 minutes in boiling water; a hard-boiled egg takes 10 to 12 minutes."
            )
        ],
        negatives=[
            tdoc("Poached eggs are cooked without the shell in simmering water with a little vinegar."),
            tdoc("Egg whites are mostly water and protein."),
        ],
        pos_scores=[0.92],
        neg_scores=[0.41, 0.13],
        task="flag",
        prompt="Given a web search query, retrieve relevant passages that answer the query.",
        source=f"{path}:1",
    )
    assert got[2].type == "symmetric_sts" and got[2].pos_scores is None


def test_llm_embedder(tmp_path):
    path = write_jsonl(
        tmp_path / "msmarco" / "train.json",
        [
            {
                "query": "q",
                "query_id": 1185869,
                "pos": ["p"],
                "neg": ["n1", "n2"],
                "teacher_scores": [0.9, 0.2, 0.1],
                "answers": ["a"],
                "task": "qa",
            },
            {"query": "q2", "pos": ["p2"], "neg": []},
            {"query": "chat", "history": ["h1", "h2"], "teacher_scores": [0.3, 0.6]},
        ],
    )
    assert detect_format(path) == "llm-embedder"
    got = list(iter_examples(path))
    assert got[0] == Example(
        query_id="1185869",
        query="q",
        positives=[tdoc("p")],
        negatives=[tdoc("n1"), tdoc("n2")],
        pos_scores=[0.9],
        neg_scores=[0.2, 0.1],
        task="qa",
        answers=["a"],
        source=f"{path}:1",
    )
    assert got[1].task == "msmarco"  # no task field: the parent directory names the dataset
    assert got[2] == Example(
        query_id="train.json:2",
        query="chat",
        positives=[],
        negatives=[tdoc("h1"), tdoc("h2")],
        pos_scores=[],
        neg_scores=[0.3, 0.6],
        task="msmarco",
        history=[tdoc("h1"), tdoc("h2")],
        source=f"{path}:3",
    )


def test_tevatron(tmp_path):
    path = write_jsonl(
        tmp_path / "tev.jsonl",
        [
            {
                "query_id": "7",
                "query": "q",
                "positive_passages": [{"docid": "d1", "title": "T", "text": "p"}],
                "negative_passages": [{"docid": 2, "title": "", "text": "n"}],
            }
        ],
    )
    assert detect_format(path) == "tevatron"
    assert list(iter_examples(path)) == [
        Example(
            query_id="7",
            query="q",
            positives=[Doc(id="d1", text="p", title="T")],
            negatives=[Doc(id="2", text="n")],
            task="tev",
            source=f"{path}:1",
        )
    ]


def test_corpus_id_example_file():
    path = EXAMPLES / "corpus_id" / "train.json"
    assert detect_format(path) == "nemo-corpus-id"
    got = list(iter_examples(path))
    instruction = "Given a question, retrieve Wikipedia passages that answer it."
    assert got[0] == Example(
        query_id="q-001",
        query="When did the Berlin Wall fall?",
        positives=[
            Doc(
                id="wiki-1",
                title="Berlin Wall",
                text="The Berlin Wall fell on 9 November 1989, when East German authorities opened the border crossings.",
            )
        ],
        negatives=[
            Doc(
                id="wiki-2",
                title="German reunification",
                text="German reunification was completed on 3 October 1990, when the German Democratic Republic joined the Federal Republic.",
            ),
            Doc(
                id="wiki-5",
                title="Mars",
                text="Mars is the fourth planet from the Sun and is called the Red Planet because iron oxide on its surface gives it a reddish colour.",
            ),
        ],
        task="wiki",
        query_instruction=instruction,
        corpus_id="wiki",
        source=f"{path}:6",
    )
    assert [e.query_id for e in got] == ["q-001", "q-002", "q-003"]
    assert [(e.source.rsplit(":", 1)[1]) for e in got] == ["6", "13", "20"]
    ids_only = list(iter_examples(path, resolve=False))
    assert ids_only[1].positives == [Doc(id="wiki-3")] and ids_only[1].negatives == [
        Doc(id="wiki-4"),
        Doc(id="wiki-6"),
    ]


def test_corpus_id_data_before_corpus_and_minified(tmp_path):
    make_corpus(tmp_path / "c", "cc", {"1": "one", "2": "two"})
    doc = {
        "data": [
            {"question_id": 5, "question": "q", "corpus_id": "cc", "pos_doc": [1], "neg_doc": [{"id": "2"}]}
        ],
        "corpus": [{"path": "c"}],
    }
    for name, indent in (("pretty.json", 1), ("minified.json", None)):
        path = write_json(tmp_path / name, doc, indent=indent)
        assert detect_format(path) == "nemo-corpus-id"
        (ex,) = iter_examples(path)
        assert (
            ex.query_id == "5"
            and ex.positives == [Doc(id="1", text="one")]
            and ex.negatives == [Doc(id="2", text="two")]
        )


def test_beir_directory(tmp_path):
    root = make_beir(tmp_path / "tiny")
    assert detect_format(root) == "beir"
    stats = ReadStats()
    got = list(iter_examples(root, split="train", stats=stats))
    qrels = root / "qrels" / "train.tsv"
    assert got == [
        Example(
            query_id="q1",
            query="red planet",
            positives=[
                Doc(id="d1", text="Mars is red.", title="Mars"),
                Doc(id="d3", text="The Moon orbits Earth.", title="Moon"),
            ],
            task="tiny",
            corpus_id="tiny",
            source=f"{qrels}:2",
        ),
        Example(
            query_id="q2",
            query="hot planet",
            positives=[Doc(id="d2", text="Venus is hot.")],
            task="tiny",
            corpus_id="tiny",
            source=f"{qrels}:3",
        ),
    ]
    assert sum(stats.notes.values()) == 1  # q3 has only relevance 0: counted, not silently dropped
    assert stats.corpora == {"tiny": 3}


def test_scifact_reads(scifact_dir):
    stats = ReadStats()
    train = list(iter_examples(scifact_dir, split="train", stats=stats))
    assert len(train) == 809 and stats.corpora == {"scifact": 5183}
    assert sum(len(e.positives) for e in train) == 919
    assert all(e.positives[0].text for e in train)
    assert len(list(iter_examples(scifact_dir, split="test", resolve=False))) == 300


# ---------------------------------------------------------------------------------------------------------
# Detection by content, expansion, streaming


@pytest.mark.parametrize(
    ("name", "records", "expected"),
    [
        (
            "a.txt",
            [{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [0.0]}],
            "flag",
        ),
        ("a.jsonl", [{"query": "q", "pos": ["p"]}], "flag"),
        ("a.json", [{"query": "q", "pos": ["p"]}], "llm-embedder"),
        ("a.jsonl", [{"query": "q", "pos": ["p"], "teacher_scores": [1]}], "llm-embedder"),
        ("a.data", [{"question": "q", "pos_doc": "p"}], "nemo-inline"),
        ("a.json", [{"query": "q", "positive_passages": []}], "tevatron"),
    ],
)
def test_detect_by_content(tmp_path, name, records, expected):
    assert detect_format(write_jsonl(tmp_path / name, records)) == expected


def test_detect_unknown_keys(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": 1}])
    with pytest.raises(DataError, match=r"x\.jsonl:1: cannot tell the format from the keys \['q'\]"):
        detect_format(path)


def test_expand_paths(tmp_path):
    make_corpus(tmp_path / "d" / "corp", "corp", {"1": "x"})
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"query": "q", "pos": ["p"]}])
    write_jsonl(tmp_path / "d" / "sub" / "a.json", [{"query": "q", "pos": ["p"]}])
    (tmp_path / "d" / "notes.txt").write_text("x")
    make_beir(tmp_path / "d" / "beir")
    got = expand_paths(tmp_path / "d")
    assert [p.relative_to(tmp_path / "d").as_posix() for p in got] == ["b.jsonl", "beir", "sub/a.json"]
    assert expand_paths(str(tmp_path / "d" / "*.jsonl")) == [tmp_path / "d" / "b.jsonl"]
    with pytest.raises(DataError, match="file or directory not found"):
        expand_paths(tmp_path / "missing.jsonl")


def test_json_stream_across_tiny_chunks(tmp_path, monkeypatch):
    """Records split over many buffer refills keep their values and line numbers."""
    make_corpus(tmp_path / "c", "cc", {str(i): f"text {i} é" for i in range(50)})
    data = [
        {
            "question_id": str(i),
            "question": f"q{i} ü",
            "corpus_id": "cc",
            "pos_doc": [str(i)],
            "neg_doc": [str((i + 1) % 50)],
        }
        for i in range(50)
    ]
    path = write_json(tmp_path / "train.json", {"corpus": [{"path": "c"}], "data": data}, indent=2)
    expected = list(iter_examples(path))
    monkeypatch.setattr(jsonrecords.JsonStream, "CHUNK", 7)
    assert list(iter_examples(path)) == expected
    start = (
        path.read_text(encoding="utf-8").split("\n").index('      "question_id": "3",')
    )  # 0-based; "{" is the line before
    assert expected[3].source == f"{path}:{start}" and expected[3].positives[0].text == "text 3 é"


def test_skip_invalid_counts(tmp_path):
    path = write_jsonl(
        tmp_path / "f.jsonl",
        [{"query": "a", "pos": ["x"]}, {"query": "b", "pos": []}, {"query": "c", "pos": ["y"]}],
    )
    with pytest.raises(DataError, match=r"f\.jsonl:2: pos: empty list"):
        list(iter_examples(path))
    stats = ReadStats()
    got = list(iter_examples(path, skip_invalid=True, stats=stats))
    assert [e.query for e in got] == ["a", "c"]
    assert (stats.read, stats.skipped) == (2, 1)
    assert str(stats.errors[0]).startswith(f"{path}:2: pos: empty list")


def test_query_id_index_counts_invalid_records(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"query": "a", "pos": ["x"]}\nnot json\n\n{"query": "c", "pos": ["y"]}\n')
    got = list(iter_examples(path, skip_invalid=True))
    assert [e.query_id for e in got] == [
        "f.jsonl:0",
        "f.jsonl:2",
    ]  # stable ids whether or not lines are skipped


# ---------------------------------------------------------------------------------------------------------
# Robustness: any bytes give Examples or DataError, never another exception

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "query",
                    "pos",
                    "neg",
                    "pos_doc",
                    "neg_doc",
                    "question",
                    "teacher_scores",
                    "history",
                    "positive_passages",
                    "pos_scores",
                    "type",
                    "text",
                    "id",
                    "corpus",
                    "data",
                    "path",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_json_values, max_size=4), st.sampled_from(["x.jsonl", "x.json"]), st.booleans())
def test_random_json_never_raises_other_errors(tmp_path, values, name, as_list):
    path = tmp_path / name
    if as_list:
        path.write_text(json.dumps(values), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(v) for v in values), encoding="utf-8")
    try:
        list(iter_examples(path, skip_invalid=True))
        list(iter_examples(path))
    except DataError:
        pass


@pytest.mark.parametrize(
    ("data", "byte", "line"),
    [
        (b"\xef", "0xef", 1),
        (b"\xef\xbb", "0xef", 1),
        (b"\xef\xbb\xbf\n \xff{}", "0xff", 2),
        (b" \xbb", "0xbb", 1),
    ],
)
def test_a_file_starting_with_a_broken_byte_order_mark_is_not_utf8(tmp_path, data, byte, line):
    """Found by the random-bytes test: a lone 0xEF (half a byte-order mark) is reported, not an IndexError."""
    path = tmp_path / "junk.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"not valid UTF-8 \\(byte {byte}\\)") as err:
        list(iter_examples(path))
    assert err.value.line == line


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_never_raise_other_errors(tmp_path, data):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(data)
    try:
        list(iter_examples(path, skip_invalid=True))
    except DataError:
        pass


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100000,
        '{"query": "\\ud800", "pos": ["p"]}\n',
        '[{"query": "q", "pos_doc": "\\udfff"}]',
        '{"corpus": [{"path": 5}], "data": []}',
        '{"corpus": [], "data": 3}',
        '[{"query": "q", "pos_doc": "p"}] trailing',
        "{" * 5000 + "\n",
    ],
)
def test_hostile_inputs_give_data_errors(tmp_path, text):
    path = tmp_path / "h.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(DataError):
        list(iter_examples(path))
