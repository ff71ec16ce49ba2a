#!/usr/bin/env python3
"""Build a routing validation set that looks like real LLM traffic.

Why: the router's classifiers are trained on ../shared/data (MMLU-Pro, NQ-open,
WebQuestions, CLINC150, Dolly open_qa, PersonalityChat, GSM8K, MATH, HumanEval,
MBPP, MT-Bench, BBH, ARC, StrategyQA, jailbreak sets, self-instruct). To see how
routing behaves on traffic it never saw, this script assembles prompts of ten
kinds (chit-chat, intents, everyday help, factoid, writing, math, logic, coding,
hard arena prompts, multilingual, long-context) from OTHER public datasets, each
labelled with the decision we expect: "small" (a small fast model suffices) or
"reasoning" (a large reasoning model pays off).

Nothing is copied into the repository: every text is read from a pinned commit of
a public GitHub repository, either from local bare git snapshots (--mirror DIR,
laid out as DIR/<owner>+<repo>/repo) or downloaded from raw.githubusercontent.com
into a cache directory. Sampling and the heldout/dev split are deterministic.

Usage:
    python3 models/traffic/build.py --mirror /work/.mirror     # local snapshots
    python3 models/traffic/build.py                            # download (internet)

Output: models/traffic/data/traffic.jsonl, one JSON object per line:
    {"id", "text", "kind", "expected", "source", "split"}
plus traffic-dev.jsonl (the dev part alone: training and selection) and traffic-pool.jsonl
(candidates the sampler did not pick, split "pool", from sources whose rows are independent:
more training rows of the same kinds; never judged, never equal to a sampled row).
Stdlib only (Python 3.11).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

SEED = 20240611
MAX_CHARS = 30_000
LONG_MIN_CHARS = 2_000
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "traffic.jsonl"
DEFAULT_CACHE = HERE / "data" / "cache"

SMALL, REASONING = "small", "reasoning"


# --------------------------------------------------------------------------- #
# File access: local bare git snapshots or raw.githubusercontent.com downloads #
# --------------------------------------------------------------------------- #
class Fetcher:
    def __init__(self, mirror: Path | None, cache: Path):
        self.mirror = mirror
        self.cache = cache

    def _git_dir(self, repo: str) -> Path:
        base = self.mirror / repo.replace("/", "+")
        for cand in (base / "repo", base / ".git", base):
            if (cand / "HEAD").exists():
                return cand
        raise FileNotFoundError(f"no git dir for {repo} under {base}")

    def read(self, repo: str, commit: str, path: str) -> bytes:
        if self.mirror:
            out = subprocess.run(
                ["git", "--git-dir", str(self._git_dir(repo)), "show", f"{commit}:{path}"],
                capture_output=True, check=True)
            return out.stdout
        dest = self.cache / repo.replace("/", "+") / commit / path
        if not dest.exists():
            url = f"https://raw.githubusercontent.com/{repo}/{commit}/{urllib.parse.quote(path)}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=120) as r:
                data = r.read()
            dest.write_bytes(data)
        return dest.read_bytes()

    def text(self, repo: str, commit: str, path: str) -> str:
        return self.read(repo, commit, path).decode("utf-8", errors="replace")

    def list(self, repo: str, commit: str, prefix: str) -> list[str]:
        """All file paths under `prefix` at `commit` (sorted)."""
        if self.mirror:
            out = subprocess.run(
                ["git", "--git-dir", str(self._git_dir(repo)), "ls-tree", "-r", "--name-only",
                 commit, "--", prefix], capture_output=True, check=True, text=True)
            return sorted(out.stdout.split("\n")[:-1])
        dest = self.cache / repo.replace("/", "+") / commit / ".tree.json"
        if not dest.exists():
            url = f"https://api.github.com/repos/{repo}/git/trees/{commit}?recursive=1"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=120) as r:
                dest.write_bytes(r.read())
        tree = json.loads(dest.read_text())["tree"]
        return sorted(t["path"] for t in tree if t["type"] == "blob" and t["path"].startswith(prefix))


@dataclass
class Ctx:
    """What a parser gets: file access bound to its source's repo and commit."""
    fetcher: Fetcher
    repo: str
    commit: str
    paths: list[str]

    def text(self, path: str) -> str:
        return self.fetcher.text(self.repo, self.commit, path)

    def read_bytes(self, path: str) -> bytes:
        return self.fetcher.read(self.repo, self.commit, path)

    def list(self, prefix: str) -> list[str]:
        return self.fetcher.list(self.repo, self.commit, prefix)

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{SEED}:{self.repo}:{salt}")


# A parser yields either a text (expected = the source's default) or (text, expected).
Row = str | tuple[str, str]


# --------------------------------------------------------------------------- #
# Helpers                                                                     #
# --------------------------------------------------------------------------- #
def chatterbot_conversations(yml: str) -> list[list[str]]:
    """Minimal reader for chatterbot-corpus files (lists of lists of strings)."""
    convs: list[list[str]] = []
    cur: list[str] | None = None
    in_convs = False
    for line in yml.splitlines():
        if line.startswith("conversations:"):
            in_convs = True
            continue
        if not in_convs or not line.strip():
            continue
        if line.startswith("- - "):
            cur = [line[4:]]
            convs.append(cur)
        elif line.startswith("  - ") and cur is not None:
            cur.append(line[4:])
        elif line.startswith("    ") and cur:  # folded continuation of the last item
            cur[-1] += " " + line.strip()
        elif not line.startswith(" "):
            in_convs = False

    def unquote(s: str) -> str:
        s = s.strip()
        if len(s) >= 2 and s[0] == s[-1] == "'":
            return s[1:-1].replace("''", "'")
        if len(s) >= 2 and s[0] == s[-1] == '"':
            try:
                return json.loads(s)
            except ValueError:
                return s[1:-1]
        return s

    return [[unquote(u) for u in c] for c in convs]


def user_turns(yml: str) -> Iterator[str]:
    """Even-numbered turns of each conversation: what the human side says.
    Later turns are kept only when they stand alone (3+ words), not "When?"."""
    for conv in chatterbot_conversations(yml):
        for i in range(0, len(conv), 2):
            t = conv[i].strip()
            if t and not t.startswith(("|", ">")) and (i == 0 or len(t.split()) >= 3):
                yield t


def pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


# Instruction patterns used to label free-form instructions (alpaca_eval).
RE_CODE = re.compile(
    r"\b(python|javascript|typescript|java\b|c\+\+|c#|golang|rust\b|sql|regex|bash|html|css|"
    r"function|code|script|program|algorithm|api\b|class\b|compile|debug|json|latex|excel formula)",
    re.I)
RE_MATH = re.compile(r"(\d+\s*[-+*/^x×]\s*\d+|\bsolve\b|equation|integral|derivative|probability|"
                     r"\bprove\b|how many|calculate|compute)", re.I)
RE_WRITING = re.compile(
    r"^\s*(please\s+)?(can you\s+|could you\s+)?(rewrite|re-write|paraphrase|edit|correct|proofread|"
    r"translate|summari[sz]e|simplify|shorten|rephrase|make (this|it|the)|fix|improve|polish|"
    r"write|compose|draft|create a (poem|story|slogan|tweet|haiku|limerick|joke|song)|"
    r"come up with a (poem|story|slogan|tweet|name|title|joke)|generate a (poem|story|slogan|tweet|title))\b",
    re.I)


# --------------------------------------------------------------------------- #
# Parsers: one per source                                                     #
# --------------------------------------------------------------------------- #
CHATTERBOT_CHITCHAT = ["ai", "botprofile", "computers", "conversations", "emotion", "food", "gossip",
                       "greetings", "health", "humor", "money", "movies", "politics", "psychology",
                       "sports"]


def parse_chatterbot_en(ctx: Ctx) -> Iterator[Row]:
    for topic in CHATTERBOT_CHITCHAT:
        yield from user_turns(ctx.text(f"chatterbot_corpus/data/english/{topic}.yml"))


def parse_chatterbot_trivia(ctx: Ctx) -> Iterator[Row]:
    yield from user_turns(ctx.text("chatterbot_corpus/data/english/trivia.yml"))


def parse_chatterbot_multilingual(ctx: Ctx) -> Iterator[Row]:
    skip_langs = {"english", "hinglish"}  # hinglish is romanised, mostly English words
    for path in ctx.list("chatterbot_corpus/data/"):
        parts = path.split("/")
        if len(parts) != 4 or not path.endswith(".yml") or parts[2] in skip_langs:
            continue
        if parts[3] in ("greetings.yml", "conversations.yml", "emotion.yml", "humor.yml",
                        "botprofile.yml", "food.yml", "gossip.yml", "psychology.yml"):
            for t in user_turns(ctx.text(path)):
                if not t.isascii():  # drop untranslated English leftovers
                    yield t


def parse_commonsense_dialogues(ctx: Ctx) -> Iterator[Row]:
    data = json.loads(ctx.text("data/test.json"))
    for key in sorted(data, key=lambda k: int(k)):
        turns = data[key]["turns"]
        if turns:
            yield turns[0]


def parse_banking77(ctx: Ctx) -> Iterator[Row]:
    for row in csv.DictReader(io.StringIO(ctx.text("banking_data/test.csv"))):
        yield row["text"]


HWU_PREFIX = ("CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/"
              "CrossValidation/KFold_1/testset/annotated/")


def parse_hwu64(ctx: Ctx) -> Iterator[Row]:
    for path in ctx.list(HWU_PREFIX):
        if path.endswith(".json"):
            for item in json.loads(ctx.text(path))["test_data_annotation"]:
                yield item["text"]


SNIPS_INTENTS = ["AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
                 "SearchCreativeWork", "SearchScreeningEvent"]


def parse_snips(ctx: Ctx) -> Iterator[Row]:
    for intent in SNIPS_INTENTS:
        data = json.loads(ctx.text(f"2017-06-custom-intent-engines/{intent}/validate_{intent}.json"))
        for item in data[intent]:
            yield "".join(chunk["text"] for chunk in item["data"]).strip()


def _alpaca_eval_items(ctx: Ctx) -> list[dict]:
    items = json.loads(ctx.text("results/text_davinci_003/model_outputs.json"))
    # selfinstruct items come from the self-instruct paper; the project trains on
    # self-instruct data, so that subset is left out.
    return [x for x in items if x["dataset"] != "selfinstruct"]


def parse_alpaca_eval_everyday(ctx: Ctx) -> Iterator[Row]:
    for x in _alpaca_eval_items(ctx):
        ins = x["instruction"].strip()
        if RE_CODE.search(ins) or RE_MATH.search(ins) or RE_WRITING.search(ins):
            continue
        if len(ins) > 1500:
            continue
        yield ins


def parse_alpaca_eval_writing(ctx: Ctx) -> Iterator[Row]:
    for x in _alpaca_eval_items(ctx):
        ins = x["instruction"].strip()
        if RE_WRITING.search(ins) and not RE_CODE.search(ins) and not RE_MATH.search(ins):
            yield ins


JFLEG_TEMPLATES = [
    "Fix the grammar: {s}",
    "Can you correct this sentence? {s}",
    "Please proofread this: \"{s}\"",
    "Correct any grammar or spelling mistakes in the following sentence:\n{s}",
    "Make this sentence sound more natural: {s}",
    "Is this grammatically correct? If not, fix it.\n\n{s}",
    "fix my english pls: {s}",
]


def _detok(s: str) -> str:
    s = re.sub(r" ([.,!?;:%)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s)
    s = s.replace(" n't", "n't").replace(" 's", "'s").replace(" 're", "'re").replace(" 'm", "'m")
    return s.strip()


def parse_jfleg(ctx: Ctx) -> Iterator[Row]:
    rng = ctx.rng("jfleg")
    for line in ctx.text("test/test.src").splitlines():
        if line.strip():
            yield pick(rng, JFLEG_TEMPLATES).format(s=_detok(line))


def _xquad(ctx: Ctx, lang: str) -> list[dict]:
    return json.loads(ctx.text(f"xquad.{lang}.json"))["data"]


def parse_xquad_en_questions(ctx: Ctx) -> Iterator[Row]:
    for art in _xquad(ctx, "en"):
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                yield qa["question"].strip()


XQUAD_LANGS = ["ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]


def parse_xquad_multilingual_questions(ctx: Ctx) -> Iterator[Row]:
    for lang in XQUAD_LANGS:
        for art in _xquad(ctx, lang):
            for p in art["paragraphs"]:
                for qa in p["qas"]:
                    yield qa["question"].strip()


WRITING_PASSAGE_TEMPLATES = [
    "Summarize this in two sentences:\n\n{p}",
    "Can you summarize the following paragraph?\n{p}",
    "TL;DR please:\n\n{p}",
    "Rewrite this paragraph in simpler words so a 10-year-old can understand it:\n\n{p}",
    "Paraphrase the following text:\n{p}",
    "Translate this paragraph into French:\n\n{p}",
    "Translate into Spanish:\n{p}",
    "Turn this into three bullet points:\n\n{p}",
    "Make this more concise:\n\n{p}",
    "Write a catchy tweet based on this paragraph:\n{p}",
]


def parse_xquad_writing(ctx: Ctx) -> Iterator[Row]:
    rng = ctx.rng("xquad-writing")
    for art in _xquad(ctx, "en"):
        for p in art["paragraphs"]:
            yield pick(rng, WRITING_PASSAGE_TEMPLATES).format(p=p["context"].strip())


LONG_QA_TEMPLATES = [
    "{doc}\n\nBased on the text above, {q}",
    "Read this and answer my question.\n\n{doc}\n\nQuestion: {q}",
    "{doc}\n\n{q} Answer from the passage only.",
]
LONG_TASK_TEMPLATES = [
    "Summarize the following article in one paragraph:\n\n{doc}",
    "{doc}\n\nGive me a short summary of this.",
    "Extract all the names of people, places and organisations mentioned in this text:\n\n{doc}",
    "{doc}\n\nList the dates and numbers mentioned above, one per line.",
    "Write 5 bullet-point key takeaways from this text:\n\n{doc}",
]


def parse_xquad_long(ctx: Ctx) -> Iterator[Row]:
    """Whole XQuAD articles (all paragraphs, > 2,000 chars) with a short instruction."""
    rng = ctx.rng("xquad-long")
    for art in _xquad(ctx, "en"):
        doc = "\n\n".join(p["context"].strip() for p in art["paragraphs"])
        if len(doc) < LONG_MIN_CHARS:
            continue
        qs = [qa["question"].strip() for p in art["paragraphs"] for qa in p["qas"]]
        for q in rng.sample(qs, min(4, len(qs))):
            q = q[0].lower() + q[1:] if q[:2] != q[:2].upper() else q
            yield pick(rng, LONG_QA_TEMPLATES).format(doc=doc, q=q), SMALL
        for t in rng.sample(LONG_TASK_TEMPLATES, 2):
            yield t.format(doc=doc), SMALL


def parse_svamp(ctx: Ctx) -> Iterator[Row]:
    for x in json.loads(ctx.text("SVAMP.json")):
        body = x["Body"].strip()
        sep = "" if body.endswith((".", "?", "!")) else "."
        yield f"{body}{sep} {x['Question'].strip()}"


def parse_asdiv(ctx: Ctx) -> Iterator[Row]:
    root = ET.fromstring(ctx.read_bytes("dataset/ASDiv.xml"))
    for prob in root.iter("Problem"):
        body = (prob.findtext("Body") or "").strip()
        q = (prob.findtext("Question") or "").strip()
        yield f"{body} {q}".strip()


def parse_mgsm(ctx: Ctx) -> Iterator[Row]:
    for lang in ["bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]:
        for line in ctx.text(f"mgsm/mgsm_{lang}.tsv").splitlines():
            q = line.split("\t")[0].strip()
            if q:
                yield q, REASONING


def parse_logiqa(ctx: Ctx) -> Iterator[Row]:
    """LogiQA English test: blocks of (blank, answer, passage, question, A-D)."""
    lines = ctx.text("Test.txt").splitlines()
    i = 0
    while i + 7 < len(lines) + 1:
        if lines[i].strip() == "" and i + 7 < len(lines) and lines[i + 1].strip() in "abcd":
            passage, question = lines[i + 2].strip(), lines[i + 3].strip()
            opts = [lines[i + 4 + k].strip() for k in range(4)]
            opts = [re.sub(r"^([A-D])\.", r"\1. ", o) for o in opts]
            yield f"{passage}\n{question}\n" + "\n".join(opts)
            i += 8
        else:
            i += 1


FOLIO_TEMPLATES = [
    "{p}\n\nBased on the premises above, is the following conclusion true, false, or uncertain?\n{c}",
    "Premises:\n{p}\n\nConclusion: {c}\nDoes the conclusion follow? Answer True, False or Uncertain and explain.",
    "Given these facts:\n{p}\n\nCan we conclude that \"{c}\"? Is it true, false, or unknown?",
]


def parse_folio(ctx: Ctx) -> Iterator[Row]:
    rng = ctx.rng("folio")
    for line in ctx.text("data/v0.0/folio-validation.jsonl").split("\n"):
        if not line.strip():
            continue
        x = json.loads(line)
        prem = "\n".join(s.strip() for s in x["premises"])
        yield pick(rng, FOLIO_TEMPLATES).format(p=prem, c=x["conclusion"].strip())


def parse_codealpaca(ctx: Ctx) -> Iterator[Row]:
    for x in json.loads(ctx.text("data/code_alpaca_2k.json")):
        ins, inp = x["instruction"].strip(), x.get("input", "").strip()
        text = f"{ins}\n\n{inp}" if inp else ins
        if len(text) >= 40:
            yield text


POLYGLOT_LANGS = {"cpp": "C++", "go": "Go", "java": "Java", "javascript": "JavaScript",
                  "python": "Python", "rust": "Rust"}


def _polyglot_exercises(ctx: Ctx) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(language, exercise, {instructions, stub_name, stub, test_name, test}).
    An exercise exists in several languages with the same instructions; one language
    per exercise is kept (stable hash) so near-duplicates do not straddle the splits."""
    by_lang = {lang: set(ctx.list(f"{lang}/exercises/practice/")) for lang in POLYGLOT_LANGS}
    langs_of: dict[str, list[str]] = {}
    for lang, paths in by_lang.items():
        for ex in sorted({p.split("/")[3] for p in paths}):
            langs_of.setdefault(ex, []).append(lang)
    for ex in sorted(langs_of):
        langs = langs_of[ex]
        lang = langs[int(hashlib.sha256(f"lang:{ex}".encode()).hexdigest(), 16) % len(langs)]
        paths = by_lang[lang]
        base = f"{lang}/exercises/practice/{ex}"
        if f"{base}/.meta/config.json" not in paths or f"{base}/.docs/instructions.md" not in paths:
            continue
        cfg = json.loads(ctx.text(f"{base}/.meta/config.json"))
        docs = ctx.text(f"{base}/.docs/instructions.md").strip()
        if f"{base}/.docs/instructions.append.md" in paths:
            docs += "\n\n" + ctx.text(f"{base}/.docs/instructions.append.md").strip()
        sol = [f for f in cfg.get("files", {}).get("solution", []) if f"{base}/{f}" in paths]
        tst = [f for f in cfg.get("files", {}).get("test", []) if f"{base}/{f}" in paths]
        if not sol:
            continue
        yield lang, ex, {
            "instructions": docs, "stub_name": sol[0], "stub": ctx.text(f"{base}/{sol[0]}"),
            "test_name": tst[0] if tst else "", "test": ctx.text(f"{base}/{tst[0]}") if tst else ""}


def _polyglot_is_long(lang: str, ex: str) -> bool:
    """Each exercise (all its languages) goes to one kind, coding or long, by a stable hash."""
    return int(hashlib.sha256(ex.encode()).hexdigest(), 16) % 2 == 0  # same for every language


def parse_polyglot_coding(ctx: Ctx) -> Iterator[Row]:
    for lang, ex, f in _polyglot_exercises(ctx):
        if _polyglot_is_long(lang, ex):
            continue
        yield (f"{f['instructions']}\n\nImplement this in {POLYGLOT_LANGS[lang]}. "
               f"Here is the starting file {f['stub_name']}:\n```\n{f['stub'].rstrip()}\n```")


def parse_polyglot_long(ctx: Ctx) -> Iterator[Row]:
    for lang, ex, f in _polyglot_exercises(ctx):
        if not _polyglot_is_long(lang, ex) or not f["test"]:
            continue
        text = (f"{f['instructions']}\n\n{f['stub_name']}:\n```\n{f['stub'].rstrip()}\n```\n\n"
                f"{f['test_name']}:\n```\n{f['test'].rstrip()}\n```\n\n"
                f"Implement the solution in {f['stub_name']} so that all the tests pass. "
                f"Don't change the test file or the names of the existing functions.")
        if len(text) >= LONG_MIN_CHARS:
            yield text, REASONING


def _arena_prompts(ctx: Ctx) -> Iterator[str]:
    for line in ctx.text("data/arena-hard-v0.1/question.jsonl").split("\n"):
        if line.strip():
            yield json.loads(line)["prompt"]
    for line in ctx.text("data/arena-hard-v2.0/question.jsonl").split("\n"):
        if line.strip():
            x = json.loads(line)
            if x["category"] != "creative_writing":  # creative writing is not "hard"
                yield x["prompt"]


def parse_arena_hard(ctx: Ctx) -> Iterator[Row]:
    for p in _arena_prompts(ctx):
        if len(p) <= LONG_MIN_CHARS:
            yield p


def parse_arena_long(ctx: Ctx) -> Iterator[Row]:
    for p in _arena_prompts(ctx):
        if len(p) > LONG_MIN_CHARS:
            yield p, REASONING


# --------------------------------------------------------------------------- #
# The source table                                                            #
# --------------------------------------------------------------------------- #
@dataclass
class Source:
    name: str
    repo: str
    commit: str
    paths: list[str]          # files (or folders, ending in "/") the parser reads
    licence: str
    parser: Callable[[Ctx], Iterable[Row]]
    kind: str
    expected: str | None      # None: set per row by the parser
    cap: int                  # at most this many rows sampled from the source
    note: str = ""


CHATTERBOT = ("gunthercox/chatterbot-corpus", "a01efece26661309b870af0251d96f94ee09fb19")
XQUAD = ("google-deepmind/xquad", "7d30520c717524000f0d9d2f9c10a069acd9d285")
ALPACA_EVAL = ("tatsu-lab/alpaca_eval", "cd543a149df89434d8a54582c0151c0b945c3d20")
ARENA = ("lmarena/arena-hard-auto", "196f6b826783b3da7310e361a805fa36f0be83f3")
POLYGLOT = ("Aider-AI/polyglot-benchmark", "7e0611e77b54e2dea774cdc0aa00cf9f7ed6144f")

SOURCES: list[Source] = [
    # --- chitchat (small)
    Source("chatterbot_en", *CHATTERBOT, ["chatterbot_corpus/data/english/*.yml"], "BSD-3-Clause",
           parse_chatterbot_en, "chitchat", SMALL, 200,
           "user-side turns of small-talk topics (not coding/tech_support/trivia/history/science/literature)"),
    Source("commonsense_dialogues", "alexa/Commonsense-Dialogues", "53b55325ee010279ce4ad5ca019fa2878e4f5b57",
           ["data/test.json"], "CC BY-NC 4.0", parse_commonsense_dialogues, "chitchat", SMALL, 150,
           "first turn of each test dialogue"),
    # --- intent (small)
    Source("banking77", "PolyAI-LDN/task-specific-datasets", "57ec275d8078af65b7731c2a98be812d844a6d6b",
           ["banking_data/test.csv"], "CC BY 4.0", parse_banking77, "intent", SMALL, 130),
    Source("hwu64", "xliuhw/NLU-Evaluation-Data", "f6071b496b17d71e6eb43f543af0707f4ff30557",
           [HWU_PREFIX], "CC BY 4.0", parse_hwu64, "intent", SMALL, 130, "KFold_1 test fold"),
    Source("snips", "sonos/nlu-benchmark", "b86ac7f1577868c42158d0dec77db50956046696",
           [f"2017-06-custom-intent-engines/{i}/validate_{i}.json" for i in SNIPS_INTENTS], "CC0-1.0",
           parse_snips, "intent", SMALL, 100, "validation files of the 7 intents"),
    # --- everyday (small)
    Source("alpaca_eval_everyday", *ALPACA_EVAL, ["results/text_davinci_003/model_outputs.json"],
           "CC BY-NC 4.0 (AlpacaEval set)", parse_alpaca_eval_everyday, "everyday", SMALL, 350,
           "helpful_base/koala/oasst/vicuna instructions not matching code/math/writing patterns"),
    # --- factoid (small)
    Source("xquad_en_questions", *XQUAD, ["xquad.en.json"], "CC BY-SA 4.0",
           parse_xquad_en_questions, "factoid", SMALL, 300, "SQuAD v1.1 dev questions, question only"),
    Source("chatterbot_trivia", *CHATTERBOT, ["chatterbot_corpus/data/english/trivia.yml"], "BSD-3-Clause",
           parse_chatterbot_trivia, "factoid", SMALL, 80),
    # --- writing (small)
    Source("jfleg", "keisks/jfleg", "ee06ff806a208aba815ac45313f4e750a48330a5", ["test/test.src"],
           "CC BY-NC-SA 4.0", parse_jfleg, "writing", SMALL, 150,
           "learner sentences wrapped in a grammar-fix request (template chosen by seeded RNG)"),
    Source("alpaca_eval_writing", *ALPACA_EVAL, ["results/text_davinci_003/model_outputs.json"],
           "CC BY-NC 4.0 (AlpacaEval set)", parse_alpaca_eval_writing, "writing", SMALL, 120,
           "instructions starting with a writing/editing verb"),
    Source("xquad_en_writing", *XQUAD, ["xquad.en.json"], "CC BY-SA 4.0", parse_xquad_writing,
           "writing", SMALL, 150,
           "a Wikipedia paragraph with a summarise/simplify/paraphrase/translate request (seeded template)"),
    # --- math (reasoning)
    Source("svamp", "arkilpatel/SVAMP", "689d7ccac74b9983a2ac7cc3b264f441b99e7c53", ["SVAMP.json"], "MIT",
           parse_svamp, "math", REASONING, 175, "Body + Question"),
    Source("asdiv", "chaochun/nlu-asdiv-dataset", "883f90a9a65bf00304ba8f37423910fe743abc47",
           ["dataset/ASDiv.xml"], "CC BY-NC 4.0", parse_asdiv, "math", REASONING, 175, "Body + Question"),
    # --- logic (reasoning)
    Source("logiqa", "lgw863/LogiQA-dataset", "ff6c4cbca47627b3ac2da94a29fa28204a167b41", ["Test.txt"],
           "none stated (research release)", parse_logiqa, "logic", REASONING, 200,
           "English test: passage + question + options A-D"),
    Source("folio", "Yale-LILY/FOLIO", "5d7bb84c7edab3fb358e057d2807f19cf5cf5e2d",
           ["data/v0.0/folio-validation.jsonl"], "CC BY-SA 4.0", parse_folio, "logic", REASONING, 150,
           "premises + conclusion + true/false/uncertain question (seeded template)"),
    # --- coding (reasoning)
    Source("codealpaca", "sahil280114/codealpaca", "2f78ddc5c682ed6738ad092bbbfa59ba915afcb0",
           ["data/code_alpaca_2k.json"], "CC BY-NC 4.0", parse_codealpaca, "coding", REASONING, 280,
           "instruction + input; texts under 40 chars dropped"),
    Source("polyglot_coding", *POLYGLOT, ["<lang>/exercises/practice/"], "MIT (Exercism tracks)",
           parse_polyglot_coding, "coding", REASONING, 130,
           "Exercism instructions + starter file, aider-benchmark style; half of the exercises (hash)"),
    # --- hard (reasoning)
    Source("arena_hard", *ARENA, ["data/arena-hard-v0.1/question.jsonl", "data/arena-hard-v2.0/question.jsonl"],
           "Apache-2.0", parse_arena_hard, "hard", REASONING, 350,
           "v0.1 + v2.0 hard_prompt (creative_writing skipped), prompts up to 2,000 chars"),
    # --- multilingual (per row)
    Source("mgsm", "google-research/url-nlp", "452a21ad3dae5668c06ceeac21ff073e1e40f9be",
           [f"mgsm/mgsm_{l}.tsv" for l in ["bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]],
           "CC BY 4.0", parse_mgsm, "multilingual", None, 170, "non-English MGSM -> reasoning"),
    Source("xquad_multilingual_questions", *XQUAD, [f"xquad.{l}.json" for l in XQUAD_LANGS], "CC BY-SA 4.0",
           parse_xquad_multilingual_questions, "multilingual", SMALL, 110, "translated SQuAD questions -> small"),
    Source("chatterbot_multilingual", *CHATTERBOT, ["chatterbot_corpus/data/<non-English>/"], "BSD-3-Clause",
           parse_chatterbot_multilingual, "multilingual", SMALL, 70, "non-English small-talk turns -> small"),
    # --- long (per row)
    Source("xquad_long", *XQUAD, ["xquad.en.json"], "CC BY-SA 4.0", parse_xquad_long, "long", None, 150,
           "whole article (> 2,000 chars) + a question about it or a summarise/extract instruction -> small"),
    Source("arena_long", *ARENA, ["data/arena-hard-v0.1/question.jsonl", "data/arena-hard-v2.0/question.jsonl"],
           "Apache-2.0", parse_arena_long, "long", None, 120, "arena prompts over 2,000 chars -> reasoning"),
    Source("polyglot_long", *POLYGLOT, ["<lang>/exercises/practice/"], "MIT (Exercism tracks)",
           parse_polyglot_long, "long", None, 80,
           "instructions + starter file + test file, 'make the tests pass' -> reasoning; other half of exercises"),
]


# --------------------------------------------------------------------------- #
# Build                                                                       #
# --------------------------------------------------------------------------- #
def split_of(row_id: str) -> str:
    return "heldout" if hashlib.sha256(row_id.encode()).digest()[0] % 2 == 0 else "dev"


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


# Sources left out of the pool: their rows share a passage or are translations of one another
# (the same XQuAD article, FOLIO premises, MGSM problem or chatterbot conversation in several
# languages), so an unsampled row would leak a held-out one.
POOL_EXCLUDE = {"xquad_en_questions", "xquad_en_writing", "xquad_multilingual_questions", "xquad_long",
                "folio", "mgsm", "chatterbot_multilingual"}


def build(fetcher: Fetcher, only: set[str] | None = None,
          pool: list | None = None) -> list[dict]:
    """The sampled rows (held-out and dev). With `pool`, the candidates each source did not
    sample are appended to it as (source, n, text, expected), for `pool_rows`."""
    seen: set[str] = set()
    rows: list[dict] = []
    for src in SOURCES:
        if only and src.name not in only:
            continue
        ctx = Ctx(fetcher, src.repo, src.commit, src.paths)
        cands: list[tuple[int, str, str]] = []
        local: set[str] = set()
        for n, item in enumerate(src.parser(ctx)):
            text, expected = (item if isinstance(item, tuple) else (item, src.expected))
            text = text.strip()
            key = norm(text)
            if not text or len(text) > MAX_CHARS or key in seen or key in local:
                continue
            if src.kind == "long" and len(text) < LONG_MIN_CHARS:
                continue
            assert expected in (SMALL, REASONING), (src.name, expected)
            local.add(key)
            cands.append((n, text, expected))
        rng = random.Random(f"{SEED}:{src.name}")
        chosen = sorted(rng.sample(cands, min(src.cap, len(cands))))
        if pool is not None and src.name not in POOL_EXCLUDE:
            picked = {n for n, _, _ in chosen}
            pool.extend((src, n, text, expected) for n, text, expected in cands if n not in picked)
        for n, text, expected in chosen:
            seen.add(norm(text))
            rid = f"{src.name}:{n}"
            rows.append({"id": rid, "text": text, "kind": src.kind, "expected": expected,
                         "source": src.name, "split": split_of(rid)})
        print(f"{src.name:30s} {src.kind:13s} candidates={len(cands):5d} kept={len(chosen):4d}",
              file=sys.stderr)
    return rows


def pool_rows(pool: list, rows: list[dict], per_source: int) -> list[dict]:
    """Extra training rows: candidates no source sampled, none equal (after normalising) to a
    sampled row, at most `per_source` of each. Never in the held-out part by construction."""
    taken = {norm(r["text"]) for r in rows}
    out: list[dict] = []
    count: Counter = Counter()
    for src, n, text, expected in pool:
        key = norm(text)
        if key in taken or count[src.name] >= per_source:
            continue
        taken.add(key)
        count[src.name] += 1
        out.append({"id": f"{src.name}:{n}", "text": text, "kind": src.kind, "expected": expected,
                    "source": src.name, "split": "pool"})
    return out


def print_table(rows: list[dict]) -> None:
    c = Counter((r["kind"], r["split"]) for r in rows)
    e = Counter((r["kind"], r["expected"]) for r in rows)
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    print(f"{'kind':14s} {'heldout':>8s} {'dev':>6s} {'total':>6s} {'small':>6s} {'reasoning':>9s}")
    for k in kinds:
        h, d = c[(k, "heldout")], c[(k, "dev")]
        print(f"{k:14s} {h:8d} {d:6d} {h + d:6d} {e[(k, SMALL)]:6d} {e[(k, REASONING)]:9d}")
    h = sum(v for (k, s), v in c.items() if s == "heldout")
    d = sum(v for (k, s), v in c.items() if s == "dev")
    es = sum(v for (k, x), v in e.items() if x == SMALL)
    print(f"{'TOTAL':14s} {h:8d} {d:6d} {h + d:6d} {es:6d} {h + d - es:9d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mirror", type=Path, help="directory of bare git snapshots (<owner>+<repo>/repo)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache (without --mirror)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="build only these source names (debugging)")
    ap.add_argument("--pool-per-source", type=int, default=600,
                    help="at most this many unsampled rows per source in the -pool file")
    args = ap.parse_args()
    pool: list = []
    rows = build(Fetcher(args.mirror, args.cache), set(args.only) if args.only else None, pool)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    # The dev part alone, for training and selection (models/train.sh); the held-out part is
    # read only by route_eval.py.
    dev = args.out.with_name(args.out.stem + "-dev.jsonl")
    with open(dev, "w", encoding="utf-8") as f:
        for r in rows:
            if r["split"] == "dev":
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    # The pool: rows the sampler left, for training only (more of the same kinds; never judged).
    extra = pool_rows(pool, rows, args.pool_per_source)
    pool_out = args.out.with_name(args.out.stem + "-pool.jsonl")
    with open(pool_out, "w", encoding="utf-8") as f:
        for r in extra:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out} (dev part also in {dev}); "
          f"{len(extra)} unsampled rows for training in {pool_out}", file=sys.stderr)
    print("pool by kind:", dict(Counter(r["kind"] for r in extra)), file=sys.stderr)
    print_table(rows)


if __name__ == "__main__":
    main()
