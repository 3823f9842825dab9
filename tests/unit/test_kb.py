"""Knowledge base: chunking, ingest of every supported format, incremental updates, search, RAG messages."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from caregpt.kb import (
    KnowledgeBase,
    KnowledgeBaseError,
    KnowledgeBaseRegistry,
    UnknownKnowledgeBase,
    build_rag_messages,
    citations_for,
)
from caregpt.kb.cli import main as kb_main
from caregpt.kb.embed import EndpointEncoder
from caregpt.kb.ingest import ingest
from caregpt.kb.text import chunk_text, split_sentences, tokenize

CHINESE = (
    "高血压是常见的慢性病。长期血压升高会损害心脏、大脑和肾脏！患者应该低盐饮食吗？应该；每天盐不超过五克。\n"
    "规律服药很重要。不要自行停药。Check your blood pressure at home. Keep a record!"
)


def test_sentences_end_at_chinese_and_english_terminators():
    sentences = split_sentences(CHINESE)
    assert sentences[0] == "高血压是常见的慢性病。"
    assert sentences[1].endswith("！") and sentences[2].endswith("？") and sentences[3].endswith("；")
    assert "Check your blood pressure at home." in sentences
    assert all(s == s.strip() and s for s in sentences)
    assert split_sentences("剂量为3.5 mg，每日两次。") == ["剂量为3.5 mg，每日两次。"]  # a decimal point is no end


def test_chunks_respect_size_keep_sentences_whole_and_overlap():
    text = CHINESE * 4
    chunks = chunk_text(text, chunk_size=60, overlap=20)
    assert len(chunks) > 3
    assert all(len(c) <= 60 for c in chunks)
    for sentence in split_sentences(text):  # every sentence appears whole in some chunk
        assert any(sentence in c for c in chunks)
    shared = [a for a, b in zip(chunks, chunks[1:]) if any(s in b for s in split_sentences(a)[-1:])]
    assert shared, "consecutive chunks should share their boundary sentence"


def test_a_sentence_longer_than_a_chunk_is_cut_into_windows():
    chunks = chunk_text("很" * 250 + "。", chunk_size=100, overlap=10)
    assert all(len(c) <= 100 for c in chunks) and len(chunks) == 3
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", chunk_size=10, overlap=10)


def test_tokens_are_lowercase_words_without_punctuation_or_stopwords():
    tokens = tokenize("我最近胸口疼，Heart rate 很快！")
    assert "heart" in tokens and "胸口" in tokens
    assert not {"，", "！", "我", " "} & set(tokens)


def _write_pdf(path, lines):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    for line in lines:
        pdf.multi_cell(0, 8, line)
        pdf.ln(2)
    pdf.output(str(path))


def _write_docx(path, paragraphs):
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "随访间隔"
    table.rows[0].cells[1].text = "三个月"
    document.save(str(path))


@pytest.fixture()
def corpus(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "hypertension.txt").write_text("高血压患者应当低盐饮食。每日食盐摄入量不超过五克。", encoding="utf-8")
    (docs / "asthma.md").write_text("# 哮喘\n\n哮喘发作时应使用吸入剂。避免接触过敏原。", encoding="utf-8")
    (docs / "gb.txt").write_bytes("痛风患者要少吃海鲜和动物内脏。".encode("gb18030"))
    (docs / "faq.json").write_text(json.dumps([{"content": "糖尿病患者需要监测血糖。"}, {"content": "甲状腺结节多数是良性的。"}],
                                              ensure_ascii=False), encoding="utf-8")
    (docs / "sub" / "qa.jsonl").write_text(
        json.dumps({"content": "乙肝疫苗需要接种三针。"}, ensure_ascii=False) + "\n{not json\n" + json.dumps({"title": "x"}) + "\n",
        encoding="utf-8")
    _write_pdf(docs / "guide.pdf", ["Migraine attacks often come with nausea and sensitivity to light.",
                                    "Keep a headache diary to find triggers."])
    _write_docx(docs / "notes.docx", ["骨质疏松症患者应补充钙和维生素D。", "适量晒太阳有助于骨骼健康。"])
    (docs / "empty.txt").write_text("  \n\n", encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"this is not a pdf at all")
    (docs / "broken.docx").write_bytes(b"PK\x03\x04 broken zip")
    (docs / "image.png").write_bytes(b"\x89PNG\r\n")
    (docs / ".hidden.txt").write_text("隐藏文件不应被索引。", encoding="utf-8")
    return docs


def test_ingest_reads_every_format_and_reports_what_it_skipped(tmp_path, corpus):
    report = ingest(tmp_path / "kb", [corpus, tmp_path / "missing.txt"])
    added = {p.rsplit("/", 1)[-1] for p in report.added}
    assert added == {"hypertension.txt", "asthma.md", "gb.txt", "faq.json", "qa.jsonl", "guide.pdf", "notes.docx"}
    skipped = {path.rsplit("/", 1)[-1]: reason for path, reason in report.skipped}
    assert skipped["empty.txt"].startswith("empty")
    assert skipped["broken.pdf"].startswith("unreadable") and skipped["broken.docx"].startswith("unreadable")
    assert skipped["image.png"].startswith("unsupported type .png")
    assert skipped["missing.txt"] == "not found"
    assert ".hidden.txt" not in skipped and ".hidden.txt" not in added
    problems = " ".join(problem for _, problem in report.warnings)
    assert "line 2: invalid JSON" in problems and "line 3: no text in fields" in problems

    kb = KnowledgeBase.open(tmp_path / "kb")
    assert kb.info()["files"] == 7 and kb.info()["documents"] == 8
    for query, source in [("低盐饮食", "docs/hypertension.txt"), ("吸入剂", "docs/asthma.md"), ("海鲜", "docs/gb.txt"),
                          ("甲状腺结节", "docs/faq.json"), ("乙肝疫苗", "docs/sub/qa.jsonl"), ("migraine nausea", "docs/guide.pdf"),
                          ("骨质疏松 钙", "docs/notes.docx"), ("随访间隔", "docs/notes.docx")]:
        hits = kb.search(query, k=3)
        assert hits and hits[0].source == source, (query, hits[:1])
    assert kb.search("甲状腺结节", 1)[0].doc_id == "docs/faq.json#1"


def test_reingest_skips_unchanged_replaces_changed_and_prunes_deleted(tmp_path, corpus):
    kb_dir = tmp_path / "kb"
    ingest(kb_dir, [corpus])
    again = ingest(kb_dir, [corpus])
    assert not again.added and not again.updated and again.chunks_written == 0 and len(again.unchanged) == 7

    (corpus / "hypertension.txt").write_text("高血压患者需要规律监测血压，坚持服用降压药。", encoding="utf-8")
    (corpus / "asthma.md").unlink()
    changed = ingest(kb_dir, [corpus])
    assert [p.rsplit("/", 1)[-1] for p in changed.updated] == ["hypertension.txt"]
    assert not changed.removed  # deletions are only applied when asked
    kb = KnowledgeBase.open(kb_dir)
    assert not kb.search("低盐饮食", 3) or kb.search("低盐饮食", 3)[0].source != "docs/hypertension.txt"
    assert kb.search("降压药", 1)[0].source == "docs/hypertension.txt"
    assert kb.search("吸入剂", 1)[0].source == "docs/asthma.md"

    pruned = ingest(kb_dir, [corpus], prune=True)
    assert [p.rsplit("/", 1)[-1] for p in pruned.removed] == ["asthma.md"]
    assert all(h.source != "docs/asthma.md" for h in KnowledgeBase.open(kb_dir).search("吸入剂 哮喘", 5))


def test_chunk_settings_are_fixed_when_a_knowledge_base_is_created(tmp_path, corpus):
    ingest(tmp_path / "kb", [corpus / "hypertension.txt"], chunk_size=200)
    with pytest.raises(KnowledgeBaseError, match="chunk_size=200"):
        ingest(tmp_path / "kb", [corpus / "asthma.md"], chunk_size=300)


HAND_QUERIES = [  # (symptoms in a patient's words, the department whose guide should come first)
    ("皮肤上长了红疹，又痒又脱皮", "皮肤科"), ("牙齿疼，牙龈出血", "口腔科"), ("最近耳鸣，听力下降", "耳科"),
    ("鼻塞流涕，总是打喷嚏，鼻窦炎又犯了", "鼻科"), ("怀孕三个月，想做孕期检查", "产科"), ("月经不调，经常痛经", "妇科"),
    ("孩子哮喘发作，咳嗽气喘", "儿童呼吸科"), ("近视加深，想配一副眼镜验光", "验光配镜科"),
    ("老人看东西模糊，医生说晶状体混浊", "白内障科"), ("骨折以后关节疼，活动受限", "骨科"),
    ("情绪低落，焦虑失眠，压力很大", "心理健康科"), ("血糖高，甲状腺也有问题", "内分泌科"),
    ("尿频尿急，排尿时疼痛，怀疑膀胱有问题", "泌尿外科"), ("手术后需要康复训练，恢复行走功能", "康复科"),
    ("经常胃痛反酸，可能是胃溃疡", "消化内科"), ("心绞痛，心律失常", "心内科"),
]


def test_symptom_queries_find_the_right_department_guide_first(tmp_path, test_data, capsys):
    from caregpt.medical.catalog import load_catalog

    guides = test_data / "hospital_guide_departments.json"
    assert kb_main(["ingest", "--kb", str(tmp_path / "kb"), str(guides)]) == 0
    names = load_catalog(guides).names  # guide record i is catalog department i
    kb = KnowledgeBase.open(tmp_path / "kb")
    first = []
    for query, department in HAND_QUERIES:
        hits = kb.search(query, k=3)
        first.append(bool(hits) and names[int(hits[0].doc_id.rsplit("#", 1)[1])] == department)
    print(f"hand-written symptom queries with the right guide first: {sum(first)}/{len(first)}")
    assert sum(first) >= max(10, int(0.75 * len(first)))


def test_empty_or_missing_knowledge_base_gives_a_clear_message(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert kb_main(["ingest", "--kb", str(tmp_path / "kb"), str(tmp_path / "empty.txt")]) == 1
    assert kb_main(["search", "--kb", str(tmp_path / "kb"), "头痛"]) == 1
    assert "is empty" in capsys.readouterr().err
    assert kb_main(["search", "--kb", str(tmp_path / "nowhere"), "头痛"]) == 1
    err = capsys.readouterr().err
    assert "no knowledge base at" in err and "caregpt kb ingest" in err
    assert KnowledgeBase.open(tmp_path / "kb").search("头痛", 5) == []
    assert kb_main(["ingest", "--help"]) == 0 and "--chunk_size" in capsys.readouterr().out
    # the one loader: a bad value exits 2 naming the option; both spellings of a flag work
    assert kb_main(["search", "--kb", str(tmp_path / "kb"), "-k", "0", "头痛"]) == 2
    assert "invalid k='0'" in capsys.readouterr().err
    assert kb_main(["ingest", "--kb", str(tmp_path / "kb"), "--chunk_siz", "9", str(tmp_path / "empty.txt")]) == 2
    assert "did you mean 'chunk_size'" in capsys.readouterr().err


def _tiny_encoder(directory, texts) -> str:
    """A randomly initialised 1-layer BERT with a character vocabulary: real code path, no download."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    chars = sorted({ch for text in texts for ch in text if not ch.isspace()})
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n", encoding="utf-8")
    BertTokenizer(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(chars) + 5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(directory)
    return str(directory)


def test_hybrid_search_with_a_local_encoder(tmp_path, corpus, capsys):
    texts = [p.read_text(encoding="utf-8") for p in corpus.glob("*.txt") if p.name != "gb.txt"] + ["头痛 哮喘 血糖"]
    model_dir = _tiny_encoder(tmp_path / "encoder", texts)
    kb_dir = tmp_path / "kb"
    assert kb_main(["ingest", "--kb", str(kb_dir), "--embed-model", model_dir, str(corpus)]) == 0
    kb = KnowledgeBase.open(kb_dir)
    assert kb.info()["dense"] and kb.info()["encoder"]["kind"] == "local"
    norms = np.linalg.norm(kb.index.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    dense = kb.search("低盐饮食", k=4, mode="dense")
    assert len(dense) == 4  # dense ranks every chunk
    hybrid = kb.search("低盐饮食", k=4)  # auto -> hybrid
    assert hybrid[0].source == "docs/hypertension.txt"  # first in BM25; fusion keeps a strong lexical match on top
    assert hybrid[0].score > hybrid[-1].score
    # an incremental ingest reuses the stored encoder without being told again
    (corpus / "new.txt").write_text("头痛时应当休息。", encoding="utf-8")
    assert kb_main(["ingest", "--kb", str(kb_dir), str(corpus)]) == 0
    assert KnowledgeBase.open(kb_dir).index.vectors.shape[0] == len(KnowledgeBase.open(kb_dir))
    with pytest.raises(KnowledgeBaseError, match="no vectors"):
        KnowledgeBase.from_texts([("a", "a", "头痛")]).search("头痛", 1, mode="dense")


class _Embeddings(BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible /v1/embeddings: a bag of characters hashed into 16 dimensions."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = []
        for index, text in enumerate(body["input"]):
            vector = [0.0] * 16
            for ch in text:
                vector[ord(ch) % 16] += 1.0
            data.append({"index": index, "embedding": vector, "object": "embedding"})
        payload = json.dumps({"object": "list", "data": data[::-1], "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_endpoint_encoder_through_an_openai_compatible_server(tmp_path, corpus):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        encoder = EndpointEncoder(f"http://127.0.0.1:{server.server_port}/v1", "stand-in")
        vectors = encoder.encode(["头痛", "哮喘", "头痛"])
        assert np.allclose(vectors[0], vectors[2]) and vectors.shape == (3, 16)  # order restored from "index"
        ingest(tmp_path / "kb", [corpus / "hypertension.txt", corpus / "asthma.md"], encoder=encoder)
        kb = KnowledgeBase.open(tmp_path / "kb")
        assert kb.info()["encoder"]["kind"] == "endpoint" and "api_key_env" in kb.info()["encoder"]
        assert kb.search("吸入剂", 1)[0].source == "asthma.md"  # a file given by itself is cited by its name
    finally:
        server.shutdown()
        server.server_close()


def test_rag_messages_cite_sources_and_citations_match_the_numbers():
    kb = KnowledgeBase.from_texts([("a.txt", "a.txt", "高血压患者应低盐饮食。"), ("b.txt", "b.txt", "糖尿病患者要监测血糖。")])
    hits = kb.search("高血压 血糖", k=2)
    messages = [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "高血压和血糖要注意什么？"}]
    out = build_rag_messages(messages, hits)
    assert len(out) == 2 and out[0]["content"].startswith("你是医生。") and out[1] == messages[1]
    assert "[1] (source: " in out[0]["content"] and "[2] (source: " in out[0]["content"]
    assert messages[0]["content"] == "你是医生。"  # the caller's list is not modified
    citations = citations_for(hits)
    assert [c["index"] for c in citations] == [1, 2]
    assert {c["document"] for c in citations} == {"a.txt", "b.txt"} and all("chunk" in c and "score" in c for c in citations)
    no_system = build_rag_messages(messages[1:], hits[:1])
    assert no_system[0]["role"] == "system" and "[1]" in no_system[0]["content"]
    assert build_rag_messages(messages, []) == messages
    assert len(citations_for(hits, max_chars=10)) == 1  # only what fits in the prompt is cited


def test_registry_maps_names_to_configured_directories_only(tmp_path, corpus):
    ingest(tmp_path / "kb", [corpus / "hypertension.txt"])
    registry = KnowledgeBaseRegistry({"guides": tmp_path / "kb"})
    assert registry.get("guides").search("低盐", 1)
    for name in ("missing", str(tmp_path / "kb"), "../kb"):
        with pytest.raises(UnknownKnowledgeBase, match="does not exist"):
            registry.get(name)
    with pytest.raises(ValueError, match="knowledge base name"):
        KnowledgeBaseRegistry({"../etc": tmp_path})
