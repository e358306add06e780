"""Every entry point answers bad input in one line: exit code 2, one ``error:`` line on stderr, no traceback, and no
file of the workspace created, changed or removed.

The cases are what a hostile but realistic user gives: missing, empty, undecodable or folder inputs, files of the
wrong kind or cut short, unknown or malformed options and recipes, out-of-range numbers. Each entry point is called
in-process through its ``main`` (the same function its command runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from baselines import train_bert
from dataset import generate
from ensemble import mbr, optimize
from pseudolabels import dynamic_threshold, embedding, extract_unlabel, retrieve
from scripts import demo, inference, push_to_hub, train_dft, train_grpo
from utils import gt_to_tag, pred_to_offset
from utils.paths import load_module_from_path

evaluate = load_module_from_path("evaluate/evaluate.py", "lamar_evaluate_cli")
compare = load_module_from_path("evaluate/compare.py", "lamar_compare_cli")
errors = load_module_from_path("evaluate/errors.py", "lamar_errors_cli")
viewer = load_module_from_path("evaluate/viewer.py", "lamar_viewer_cli")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """A small, valid workspace: a synthetic MedDec, its tagged CSVs, predictions, an inference output, caches, and
    the bad files the cases point at."""
    from utils.pseudolabels.embedding import embed_batches, prepare_cache
    from utils.meddec.predictions import Span, write_predictions
    from utils.meddec.tables import inference_output_frame, iter_notes_table, read_tagged_table, write_csv
    from utils.tagging.locate import locate_spans
    from utils.testing.tiny_models import write_tagged_corpus

    root = tmp_path_factory.mktemp("ws")
    corpus = write_tagged_corpus(root, ("train", "val", "test"), seed=3, n_train=3, n_val=3, n_test=2,
                                 n_unlabeled=4, mean_chars=400, mean_spans=4)
    paths = corpus.paths
    val = read_tagged_table(root / "tagged" / "val.csv")
    gold = {i: [Span(*s) for s in json.loads(o)] for i, o in zip(val.file_id, val.gold_offsets)}
    write_predictions(root / "val.json", gold)
    records = [{"predicted": g, "entropy": 0.1 * k, "num_tokens": 3, "truncated": False, "spans": locate_spans(t, g).spans}
               for k, (t, g) in enumerate(zip(val.raw_text, val.gold_span))]
    write_csv(root / "val_out.csv", inference_output_frame(val[["file_id", "raw_text"]], records))
    pool = root / "pool.csv"
    pool.write_text("file_id,raw_text\n9_9_1,first pool note\n9_9_2,second pool note\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    for name, batches in (("pool", iter_notes_table(pool, 2)),
                          ("meddec", [(val.file_id.tolist(), val.raw_text.tolist())])):
        out = prepare_cache(root / "emb" / name, {"model": "fake", "shard_size": 2, "normalized": True, "prompt_name": None})
        embed_batches(batches, out, lambda texts: rng.normal(size=(len(texts), 4)), progress=False)
    (root / "folder").mkdir()
    (root / "empty.txt").write_text("")
    (root / "latin1.csv").write_bytes("file_id,raw_text\n1_2_3,caf\xe9\n".encode("latin-1"))
    (root / "latin1.json").write_bytes('[{"file_name": "caf\xe9", "predictions": []}]'.encode("latin-1"))
    (root / "cut.csv").write_text('file_id,raw_text\n1_2_3,"an unterminated quote\n', encoding="utf-8")
    (root / "bad.json").write_text("[{]", encoding="utf-8")
    (root / "wrong_shape.json").write_text('{"file_name": "x"}', encoding="utf-8")
    (root / "bad_span.json").write_text('[{"file_name": "1_2_3", "predictions": [{"start_offset": "0", '
                                        '"end_offset": 5, "category": 3}]}]', encoding="utf-8")
    (root / "no_columns.csv").write_text("id,text\n1,x\n", encoding="utf-8")
    (root / "dup.csv").write_text("file_id,raw_text\n1_2_3,x\n1_2_3,y\n", encoding="utf-8")
    (root / "empty_id.csv").write_text('file_id,raw_text\n"",x\n', encoding="utf-8")
    (root / "header_only.csv").write_text("file_id,raw_text\n", encoding="utf-8")
    (root / "bad.yaml").write_text("learning_rate: [1, \n", encoding="utf-8")
    (root / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (root / "unknown.yaml").write_text("lerning_rate: 1.0e-3\n", encoding="utf-8")
    (root / "wrong_type.yaml").write_text("learning_rate: fast\n", encoding="utf-8")
    (root / "bad_choice.yaml").write_text("backend: tgi\n", encoding="utf-8")
    (root / "noteevents_cut.csv").write_text('ROW_ID,SUBJECT_ID,HADM_ID,CATEGORY,DESCRIPTION,TEXT\n1,2,3,"Discharge '
                                             'summary",Report,"cut here\n', encoding="utf-8")
    (root / "noteevents_latin1.csv").write_bytes(
        "ROW_ID,SUBJECT_ID,HADM_ID,CATEGORY,DESCRIPTION,TEXT\n1,2,3,Discharge summary,Report,caf\xe9\n".encode("latin-1"))
    (root / "a_file").write_text("x", encoding="utf-8")
    (root / "bad_tokens.csv").write_text('file_id,raw_text,predicted,entropy,num_tokens,truncated,spans\n'
                                         '9_9_9,a note,,,none,True,[]\n', encoding="utf-8")
    (root / "test_split.csv").write_text('"file_id","raw_text","gold_span","gold_offsets"\n"1_2_3","a note","",""\n',
                                         encoding="utf-8")
    (root / "thresholds_missing.json").write_text('{"t_cluster": 0.1, "t_pair": 0.1, "t_support": 0.3}', encoding="utf-8")
    (root / "thresholds_range.json").write_text('{"t_cluster": 1.5, "t_pair": 0.1, "t_support": 0.3, "t_dedup": 0.8}',
                                                encoding="utf-8")
    return {"root": root, **{name: root / name for name in (
        "folder", "empty.txt", "latin1.csv", "latin1.json", "cut.csv", "bad.json", "wrong_shape.json", "bad_span.json",
        "no_columns.csv", "dup.csv", "empty_id.csv", "header_only.csv", "bad.yaml", "list.yaml", "unknown.yaml",
        "wrong_type.yaml", "bad_choice.yaml", "noteevents_cut.csv", "noteevents_latin1.csv", "a_file", "test_split.csv", "val.json",
        "val_out.csv", "pool.csv", "thresholds_missing.json", "thresholds_range.json", "bad_tokens.csv")},
        "gold": paths.gold_dir, "raw": paths.raw_text_dir, "stats": paths.stats_csv, "train_split": paths.split("train"),
        "val_split": paths.split("val"), "train_csv": root / "tagged" / "train.csv", "val_csv": root / "tagged" / "val.csv",
        "noteevents": paths.noteevents_csv, "emb_pool": root / "emb" / "pool", "emb_meddec": root / "emb" / "meddec"}


Case = tuple[str, Callable[..., int], Callable[[dict], list[str]]]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def bad_file_variants(flag: str, extra: str = "") -> list[tuple[str, Callable[[dict], list[str]]]]:
    """The same flag pointed at a missing file, a folder, an empty file, undecodable bytes, a file cut mid-quote."""
    return [
        (f"{flag} missing{extra}", lambda w: [flag, str(w["root"] / "does_not_exist.csv")]),
        (f"{flag} folder{extra}", lambda w: [flag, str(w["folder"])]),
        (f"{flag} empty{extra}", lambda w: [flag, str(w["empty.txt"])]),
        (f"{flag} latin-1{extra}", lambda w: [flag, str(w["latin1.csv"])]),
        (f"{flag} cut mid-quote{extra}", lambda w: [flag, str(w["cut.csv"])]),
    ]


def config_variants() -> list[tuple[str, Callable[[dict], list[str]]]]:
    """Recipe problems every script answers the same way (utils.cli)."""
    return [
        ("--config missing", lambda w: ["--config", str(w["root"] / "none.yaml")]),
        ("--config folder", lambda w: ["--config", str(w["folder"])]),
        ("--config malformed YAML", lambda w: ["--config", str(w["bad.yaml"])]),
        ("--config a list", lambda w: ["--config", str(w["list.yaml"])]),
        ("--config unknown key", lambda w: ["--config", str(w["unknown.yaml"])]),
        ("--config without a path", lambda w: ["--config"]),
        ("unknown flag", lambda w: ["--no_such_flag", "1"]),
        ("stray positional", lambda w: ["stray"]),
    ]


def cases() -> list[Case]:
    out: list[Case] = []

    def add(main, base: Callable[[dict], list[str]], variants) -> None:
        for name, extra in variants:
            out.append((name, main, (lambda b, e: lambda w: [*b(w), *e(w)])(base, extra)))

    # utils/gt_to_tag.py
    def g2t(w):
        return ["--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--train_split", str(w["train_split"]),
                "--val_split", str(w["val_split"]), "--out_dir", str(w["root"] / "out_g2t")]
    add(gt_to_tag.main, g2t, [*config_variants(), *[(f"gt_to_tag {n}", v) for n, v in
                                                    bad_file_variants("--raw_text_csv")]])
    add(gt_to_tag.main, g2t, [("gt_to_tag no_columns raw csv", lambda w: ["--raw_text_csv", str(w["no_columns.csv"])]),
                              ("gt_to_tag dup raw csv", lambda w: ["--raw_text_csv", str(w["dup.csv"])]),
                              ("gt_to_tag missing split", lambda w: ["--train_split", str(w["root"] / "x.txt")]),
                              ("gt_to_tag split folder", lambda w: ["--val_split", str(w["folder"])]),
                              ("gt_to_tag split latin-1", lambda w: ["--val_split", str(w["latin1.csv"])]),
                              ("gt_to_tag gold folder missing", lambda w: ["--gold_dir", str(w["root"] / "nogold")]),
                              ("gt_to_tag out_dir is a file", lambda w: ["--out_dir", str(w["a_file"])]),
                              ("gt_to_tag dedupe not a bool", lambda w: ["--dedupe_spans", "sometimes"]),
                              ("gt_to_tag split order not a bool", lambda w: ["--keep_split_order", "3"])])
    # utils/pred_to_offset.py
    def p2o(w):
        return ["--output", str(w["root"] / "out_p2o.json")]
    add(pred_to_offset.main, p2o, [(f"pred_to_offset {n}", v) for n, v in bad_file_variants("--input")])
    add(pred_to_offset.main, p2o, [("pred_to_offset no columns", lambda w: ["--input", str(w["no_columns.csv"])]),
                                   ("pred_to_offset dup ids", lambda w: ["--input", str(w["dup.csv"])]),
                                   ("pred_to_offset unclosed choice", lambda w: ["--input", str(w["val_out.csv"]),
                                                                                 "--unclosed", "keep"]),
                                   ("pred_to_offset locate choice", lambda w: ["--input", str(w["val_out.csv"]),
                                                                               "--locate", "edlib"]),
                                   ("pred_to_offset missing raw dir", lambda w: ["--input", str(w["val_out.csv"]),
                                                                                 "--raw_text_dir", str(w["folder"])]),
                                   ("pred_to_offset output under a file", lambda w: [
                                       "--input", str(w["val_out.csv"]), "--output", str(w["a_file"] / "o.json")])])
    # scripts/inference.py
    def inf(w):
        return ["--backend", "transformers", "--model", str(w["folder"]), "--output", str(w["root"] / "out_inf.csv")]
    add(inference.main, inf, [*[(f"inference {n}", v) for n, v in bad_file_variants("--input")],
                              *[(f"inference {n}", v) for n, v in config_variants()]])
    add(inference.main, inf, [
        ("inference dup ids", lambda w: ["--input", str(w["dup.csv"])]),
        ("inference empty id", lambda w: ["--input", str(w["empty_id.csv"])]),
        ("inference is an output", lambda w: ["--input", str(w["val_out.csv"])]),
        ("inference missing model", lambda w: ["--input", str(w["pool.csv"]), "--model", "/no/such/model"]),
        ("inference missing adapter", lambda w: ["--input", str(w["pool.csv"]), "--adapter", "./no/adapter"]),
        ("inference max_new_tokens 0", lambda w: ["--input", str(w["pool.csv"]), "--max_new_tokens", "0"]),
        ("inference batch_size -1", lambda w: ["--input", str(w["pool.csv"]), "--batch_size", "-1"]),
        ("inference batch_size text", lambda w: ["--input", str(w["pool.csv"]), "--batch_size", "many"]),
        ("inference temperature sampling", lambda w: ["--input", str(w["pool.csv"]), "--temperature", "0.7"]),
        ("inference vllm_kwargs not json", lambda w: ["--input", str(w["pool.csv"]), "--vllm_kwargs", "{x"]),
        ("inference vllm_kwargs a list", lambda w: ["--input", str(w["pool.csv"]), "--vllm_kwargs", "[1]"]),
        ("inference bad backend", lambda w: ["--input", str(w["pool.csv"]), "--backend", "tgi"]),
        ("inference outputs mismatch", lambda w: ["--input", str(w["pool.csv"]), str(w["dup.csv"])]),
        ("inference nothing to do", lambda w: []),
        ("inference copy on vllm raw logprobs", lambda w: ["--input", str(w["pool.csv"]), "--backend", "vllm",
                                                           "--copy_constraint", "--vllm_kwargs",
                                                           '{"logprobs_mode": "raw_logprobs"}']),
        ("inference copy on vllm speculative", lambda w: ["--input", str(w["pool.csv"]), "--backend", "vllm",
                                                          "--copy_constraint", "--vllm_kwargs",
                                                          '{"speculative_config": {"method": "ngram"}}']),
        ("inference copy words not bool", lambda w: ["--input", str(w["pool.csv"]), "--copy_constraint",
                                                     "--copy_word_boundaries", "maybe"]),
        ("inference copy tags 0", lambda w: ["--input", str(w["pool.csv"]), "--copy_constraint",
                                             "--copy_max_tags_per_position", "0"]),
        ("inference copy span chars 0", lambda w: ["--input", str(w["pool.csv"]), "--copy_constraint",
                                                   "--copy_max_span_chars", "0"]),
        ("inference copy text mass not bool", lambda w: ["--input", str(w["pool.csv"]), "--copy_constraint",
                                                         "--copy_text_mass", "maybe"]),
        ("inference copy unclosed not bool", lambda w: ["--input", str(w["pool.csv"]), "--copy_constraint",
                                                        "--copy_allow_unclosed", "2"]),
        ("inference locate choice", lambda w: ["--input", str(w["pool.csv"]), "--locate", "search"]),
        ("inference recipe bad choice", lambda w: ["--input", str(w["pool.csv"]), "--config", str(w["bad_choice.yaml"])]),
        ("inference data_parallel_size 0", lambda w: ["--input", str(w["pool.csv"]), "--data_parallel_size", "0"]),
        ("inference data_parallel_size text", lambda w: ["--input", str(w["pool.csv"]), "--data_parallel_size", "all"]),
        ("inference num_shards 0", lambda w: ["--input", str(w["pool.csv"]), "--num_shards", "0"]),
        ("inference shard_index too big", lambda w: ["--input", str(w["pool.csv"]), "--num_shards", "2",
                                                     "--shard_index", "2"]),
        ("inference shard_index negative", lambda w: ["--input", str(w["pool.csv"]), "--num_shards", "2",
                                                      "--shard_index", "-1"]),
        ("inference shards without index", lambda w: ["--input", str(w["pool.csv"]), "--num_shards", "2"]),
        ("inference merge one shard", lambda w: ["--input", str(w["pool.csv"]), "--merge"]),
        ("inference merge with index", lambda w: ["--input", str(w["pool.csv"]), "--num_shards", "2", "--merge",
                                                  "--shard_index", "0"]),
        ("inference merge nothing ran", lambda w: ["--input", str(w["pool.csv"]), "--num_shards", "2", "--merge"]),
        ("inference dp with shards", lambda w: ["--input", str(w["pool.csv"]), "--data_parallel_size", "2",
                                                "--num_shards", "2", "--shard_index", "0"]),
        ("inference dp too few gpus", lambda w: ["--input", str(w["pool.csv"]), "--backend", "vllm",
                                                 "--data_parallel_size", "2", "--tensor_parallel_size", "512"]),
        ("inference dp numbered device", lambda w: ["--input", str(w["pool.csv"]), "--data_parallel_size", "2",
                                                    "--device", "cuda:1"]),
        ("inference dp bad input", lambda w: ["--input", str(w["dup.csv"]), "--data_parallel_size", "2"]),
    ])
    # scripts/train_dft.py and scripts/train_grpo.py
    def dft(w):
        return ["--backend", "hf", "--model_name_or_path", str(w["folder"]), "--output_dir", str(w["root"] / "out_dft")]
    add(train_dft.main, dft, [*[(f"train_dft {n}", v) for n, v in bad_file_variants("--train_csv")],
                              *[(f"train_dft {n}", v) for n, v in config_variants()]])
    add(train_dft.main, dft, [
        ("train_dft recipe wrong type", lambda w: ["--config", str(w["wrong_type.yaml"])]),
        ("train_dft lr -1", lambda w: ["--train_csv", str(w["train_csv"]), "--learning_rate", "-1"]),
        ("train_dft epochs -1", lambda w: ["--train_csv", str(w["train_csv"]), "--num_train_epochs", "-1"]),
        ("train_dft epochs text", lambda w: ["--train_csv", str(w["train_csv"]), "--num_train_epochs", "two"]),
        ("train_dft lora_r 0", lambda w: ["--train_csv", str(w["train_csv"]), "--lora_r", "0"]),
        ("train_dft batch 0", lambda w: ["--train_csv", str(w["train_csv"]), "--per_device_train_batch_size", "0"]),
        ("train_dft bad loss", lambda w: ["--train_csv", str(w["train_csv"]), "--loss", "focal"]),
        ("train_dft bad backend", lambda w: ["--train_csv", str(w["train_csv"]), "--backend", "jax"]),
        ("train_dft test split", lambda w: ["--train_csv", str(w["test_split.csv"])]),
        ("train_dft empty model folder", lambda w: ["--train_csv", str(w["train_csv"])]),
        ("train_dft no gold columns", lambda w: ["--train_csv", str(w["pool.csv"])]),
        ("train_dft missing model", lambda w: ["--train_csv", str(w["train_csv"]), "--model_name_or_path", "/no/model"]),
        ("train_dft unsloth on cpu", lambda w: ["--train_csv", str(w["train_csv"]), "--backend", "unsloth"]),
        ("train_dft bad dft_route", lambda w: ["--train_csv", str(w["train_csv"]), "--dft_route", "liger"]),
        ("train_dft kernel route on hf", lambda w: ["--train_csv", str(w["train_csv"]), "--dft_route", "kernel"]),
    ])

    def grpo(w):
        return ["--model_name_or_path", str(w["folder"]), "--output_dir", str(w["root"] / "out_grpo")]
    add(train_grpo.main, grpo, [*[(f"train_grpo {n}", v) for n, v in bad_file_variants("--train_csv")],
                                *[(f"train_grpo {n}", v) for n, v in config_variants()]])
    add(train_grpo.main, grpo, [
        ("train_grpo generations 0", lambda w: ["--train_csv", str(w["train_csv"]), "--num_generations", "0"]),
        ("train_grpo generations 1", lambda w: ["--train_csv", str(w["train_csv"]), "--num_generations", "1"]),
        ("train_grpo lora_r 0", lambda w: ["--train_csv", str(w["train_csv"]), "--lora_r", "0"]),
        ("train_grpo unknown reward", lambda w: ["--train_csv", str(w["train_csv"]), "--rewards", "bleu"]),
        ("train_grpo missing adapter", lambda w: ["--train_csv", str(w["train_csv"]), "--adapter", "/no/adapter"]),
        ("train_grpo vllm forced", lambda w: ["--train_csv", str(w["train_csv"]), "--use_vllm_mode", "true"]),
        ("train_grpo lr text", lambda w: ["--train_csv", str(w["train_csv"]), "--learning_rate", "high"]),
        ("train_grpo vllm context too short", lambda w: ["--train_csv", str(w["train_csv"]), "--vllm_max_model_length",
                                                         "100"]),
        ("train_grpo unknown thinking mode", lambda w: ["--train_csv", str(w["train_csv"]), "--enable_thinking", "maybe"]),
        ("train_grpo stray quote not a bool", lambda w: ["--train_csv", str(w["train_csv"]), "--prompt_stray_quote", "2"]),
        ("train_grpo prompt length text", lambda w: ["--train_csv", str(w["train_csv"]), "--max_prompt_length", "long"]),
        ("train_grpo IS correction not a bool", lambda w: ["--train_csv", str(w["train_csv"]),
                                                          "--vllm_importance_sampling_correction", "often"]),
    ])
    # scripts/push_to_hub.py
    def push(w):
        return ["--repo_id", "me/model", "--dry_run"]
    add(push_to_hub.main, push, [
        ("push missing folder", lambda w: ["--folder", str(w["root"] / "nomodel")]),
        ("push folder without weights", lambda w: ["--folder", str(w["emb_pool"])]),
        ("push data folder", lambda w: ["--folder", str(w["root"] / "tagged")]),
        ("push adapter without base", lambda w: ["--folder", str(w["root"] / "m"), "--adapter", str(w["folder"])]),
        ("push adapter not an adapter", lambda w: ["--folder", str(w["root"] / "m"), "--adapter", str(w["folder"]),
                                                   "--base_model", str(w["folder"])]),
        ("push missing base", lambda w: ["--folder", str(w["root"] / "m"), "--adapter", str(w["folder"]),
                                         "--base_model", "/no/base"]),
        ("push bad model class", lambda w: ["--folder", str(w["folder"]), "--model_class", "vision"]),
        ("push no repo", lambda w: ["--folder", str(w["folder"]), "--repo_id"]),
        *[(f"push {n}", v) for n, v in config_variants()],
    ])
    # evaluate/evaluate.py
    def ev(w):
        return ["--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--split_file", str(w["val_split"]),
                "--stats_csv", str(w["stats"])]
    add(evaluate.main, ev, [*[(f"evaluate {n}", v) for n, v in bad_file_variants("--predictions")],
                            *[(f"evaluate {n}", v) for n, v in config_variants()]])
    add(evaluate.main, ev, [
        ("evaluate bad json", lambda w: ["--predictions", str(w["bad.json"])]),
        ("evaluate latin-1 json", lambda w: ["--predictions", str(w["latin1.json"])]),
        ("evaluate wrong shape", lambda w: ["--predictions", str(w["wrong_shape.json"])]),
        ("evaluate string offset", lambda w: ["--predictions", str(w["bad_span.json"])]),
        ("evaluate output under a file", lambda w: ["--predictions", str(w["val.json"]), "--output",
                                                    str(w["a_file"] / "s.json")]),
        ("evaluate output is a folder", lambda w: ["--predictions", str(w["val.json"]), "--output", str(w["folder"])]),
        ("evaluate missing gold dir", lambda w: ["--predictions", str(w["val.json"]), "--gold_dir", str(w["root"] / "x")]),
        ("evaluate stats folder", lambda w: ["--predictions", str(w["val.json"]), "--stats_csv", str(w["folder"])]),
        ("evaluate split missing", lambda w: ["--predictions", str(w["val.json"]), "--split_file", str(w["root"] / "x")]),
        ("evaluate no raw dir", lambda w: ["--predictions", str(w["val.json"]), "--raw_text_dir", str(w["folder"])]),
    ])
    add(evaluate.main, ev, [
        ("evaluate negative bootstrap", lambda w: ["--predictions", str(w["val.json"]), "--bootstrap", "-1"]),
        ("evaluate bootstrap not a number", lambda w: ["--predictions", str(w["val.json"]), "--bootstrap", "many"]),
        ("evaluate confidence 1.5", lambda w: ["--predictions", str(w["val.json"]), "--bootstrap", "10",
                                               "--confidence", "1.5"]),
        ("evaluate confidence 0", lambda w: ["--predictions", str(w["val.json"]), "--bootstrap", "10",
                                             "--confidence", "0"]),
        ("evaluate seed not an int", lambda w: ["--predictions", str(w["val.json"]), "--bootstrap", "10",
                                                "--seed", "x"]),
    ])
    # evaluate/compare.py, evaluate/errors.py, evaluate/viewer.py: several prediction sets on the same notes
    def systems(w):
        return ["--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--split_file", str(w["val_split"]),
                "--stats_csv", str(w["stats"])]

    def two(w):
        return ["--predictions", str(w["val.json"]), str(w["val.json"]), "--names", "a", "b"]
    for prefix, main, extra in (("compare", compare.main, lambda w: []),
                                ("errors", errors.main, lambda w: ["--output_dir", str(w["root"] / "errs")]),
                                ("viewer", viewer.main, lambda w: ["--output", str(w["root"] / "v.html")])):
        base = (lambda extra: lambda w: [*systems(w), *extra(w)])(extra)
        add(main, base, [
            *[(f"{prefix} {n}", (lambda v: lambda w: [*v(w), str(w["val.json"]), "--names", "a", "b"])(v))
              for n, v in bad_file_variants("--predictions")],
            *[(f"{prefix} {n}", (lambda v: lambda w: [*two(w), *v(w)])(v)) for n, v in config_variants()],
            (f"{prefix} bad json", lambda w: ["--predictions", str(w["val.json"]), str(w["bad.json"])]),
            (f"{prefix} wrong shape", lambda w: ["--predictions", str(w["wrong_shape.json"]), str(w["val.json"])]),
            (f"{prefix} too few names", lambda w: [*two(w)[:3], "--names", "a"]),
            (f"{prefix} same names", lambda w: [*two(w)[:3], "--names", "a", "a"]),
            (f"{prefix} same file without names", lambda w: two(w)[:3]),
            (f"{prefix} missing gold dir", lambda w: [*two(w), "--gold_dir", str(w["root"] / "x")]),
            (f"{prefix} no raw dir", lambda w: [*two(w), "--raw_text_dir", str(w["folder"])]),
            (f"{prefix} split missing", lambda w: [*two(w), "--split_file", str(w["root"] / "x")]),
            (f"{prefix} stats folder", lambda w: [*two(w), "--stats_csv", str(w["folder"])]),
        ])
    add(compare.main, systems, [
        ("compare one prediction set", lambda w: ["--predictions", str(w["val.json"])]),
        ("compare no predictions", lambda w: []),
        ("compare zero resamples", lambda w: [*two(w), "--bootstrap", "0"]),
        ("compare negative resamples", lambda w: [*two(w), "--bootstrap", "-5"]),
        ("compare confidence 1", lambda w: [*two(w), "--confidence", "1"]),
        ("compare output is a folder", lambda w: [*two(w), "--output", str(w["folder"])]),
        ("compare output under a file", lambda w: [*two(w), "--output", str(w["a_file"] / "c.json")]),
        ("compare bad against_first", lambda w: [*two(w), "--against_first", "maybe"]),
    ])
    add(errors.main, systems, [
        ("errors no output_dir", lambda w: two(w)),
        ("errors output_dir is a file", lambda w: [*two(w), "--output_dir", str(w["a_file"])]),
        ("errors output_dir under a file", lambda w: [*two(w), "--output_dir", str(w["a_file"] / "e")]),
        ("errors names give one file name", lambda w: [*two(w)[:3], "--names", "a b", "a_b", "--output_dir",
                                                       str(w["root"] / "errs")]),
    ])
    add(viewer.main, systems, [
        ("viewer no output", lambda w: two(w)),
        ("viewer output not html", lambda w: [*two(w), "--output", str(w["root"] / "v.json")]),
        ("viewer output is a folder", lambda w: [*two(w), "--output", str(w["folder"])]),
        ("viewer output under a file", lambda w: [*two(w), "--output", str(w["a_file"] / "v.html")]),
    ])
    # ensemble/mbr.py and ensemble/optimize.py
    def merge(w):
        return ["--output", str(w["root"] / "merged.json")]
    add(mbr.main, merge, [*[(f"mbr {n}", v) for n, v in bad_file_variants("--predictions")],
                          *[(f"mbr {n}", v) for n, v in config_variants()]])
    add(mbr.main, merge, [
        ("mbr csv", lambda w: ["--predictions", str(w["val_out.csv"])]),
        ("mbr bad json", lambda w: ["--predictions", str(w["val.json"]), str(w["bad.json"])]),
        ("mbr string offset", lambda w: ["--predictions", str(w["val.json"]), str(w["bad_span.json"])]),
        ("mbr t_pair 1.5", lambda w: ["--predictions", str(w["val.json"]), "--t_pair", "1.5"]),
        ("mbr t_support text", lambda w: ["--predictions", str(w["val.json"]), "--t_support", "half"]),
        ("mbr thresholds missing key", lambda w: ["--predictions", str(w["val.json"]), "--thresholds_json",
                                                  str(w["thresholds_missing.json"])]),
        ("mbr thresholds out of range", lambda w: ["--predictions", str(w["val.json"]), "--thresholds_json",
                                                   str(w["thresholds_range.json"])]),
        ("mbr raw dir without the note", lambda w: ["--predictions", str(w["val.json"]), "--raw_text_dir",
                                                    str(w["folder"])]),
        ("mbr no predictions", lambda w: []),
    ])

    def opt(w):
        return ["--gold_csv", "", "--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--split_file",
                str(w["val_split"]), "--storage", "none", "--output", str(w["root"] / "best.json"), "--quiet", "--no_plots"]
    add(optimize.main, opt, [*[(f"optimize {n}", v) for n, v in bad_file_variants("--predictions")],
                             *[(f"optimize {n}", v) for n, v in config_variants()]])
    add(optimize.main, opt, [
        ("optimize n_trials 0", lambda w: ["--predictions", str(w["val.json"]), "--n_trials", "0"]),
        ("optimize cv 1", lambda w: ["--predictions", str(w["val.json"]), "--cv", "1"]),
        ("optimize cv 99", lambda w: ["--predictions", str(w["val.json"]), "--cv", "99"]),
        ("optimize apply without output", lambda w: ["--predictions", str(w["val.json"]), "--apply", str(w["val.json"])]),
        ("optimize apply count", lambda w: ["--predictions", str(w["val.json"]), "--apply", str(w["val.json"]),
                                            str(w["val.json"]), "--apply-output", str(w["root"] / "s.json")]),
        ("optimize bogus storage", lambda w: ["--predictions", str(w["val.json"]), "--storage", "bogus://x"]),
        ("optimize storage outside", lambda w: ["--predictions", str(w["val.json"]), "--storage",
                                                "sqlite:////nonexistent_root_dir/deeper/x.db"]),
        ("optimize predictions outside split", lambda w: ["--predictions", str(w["val.json"]), "--split_file",
                                                          str(w["train_split"])]),
    ])
    # pseudolabels
    def ext(w):
        return ["--splits", str(w["train_split"]), "--output", str(w["root"] / "unlabeled.csv")]
    add(extract_unlabel.main, ext, [*[(f"extract {n}", v) for n, v in bad_file_variants("--noteevents")],
                                    *[(f"extract {n}", v) for n, v in config_variants()]])
    add(extract_unlabel.main, ext, [
        ("extract cut mid-quote notes", lambda w: ["--noteevents", str(w["noteevents_cut.csv"])]),
        ("extract latin-1 notes", lambda w: ["--noteevents", str(w["noteevents_latin1.csv"])]),
        ("extract no columns", lambda w: ["--noteevents", str(w["no_columns.csv"])]),
        ("extract chunksize 0", lambda w: ["--noteevents", str(w["noteevents"]), "--chunksize", "0"]),
        ("extract bad split id", lambda w: ["--noteevents", str(w["noteevents"]), "--splits", str(w["pool.csv"])]),
        ("extract exact id not a bool", lambda w: ["--noteevents", str(w["noteevents"]), "--exclude_by_exact_id", "perhaps"]),
    ])

    def emb(w):
        return ["--model", str(w["folder"]), "--pool_out", str(w["root"] / "emb_out"), "--meddec_out",
                str(w["root"] / "emb_med"), "--meddec_splits", str(w["train_split"]), "--sources", "pool"]
    add(embedding.main, emb, [*[(f"embedding {n}", v) for n, v in bad_file_variants("--pool_csv")],
                              *[(f"embedding {n}", v) for n, v in config_variants()]])
    add(embedding.main, emb, [
        ("embedding header only", lambda w: ["--pool_csv", str(w["header_only.csv"])]),
        ("embedding no columns", lambda w: ["--pool_csv", str(w["no_columns.csv"])]),
        ("embedding unknown source", lambda w: ["--pool_csv", str(w["pool.csv"]), "--sources", "notes"]),
        ("embedding shard 0", lambda w: ["--pool_csv", str(w["pool.csv"]), "--shard_size", "0"]),
        ("embedding batch 0", lambda w: ["--pool_csv", str(w["pool.csv"]), "--batch_size", "0"]),
        ("embedding devices not a device", lambda w: ["--pool_csv", str(w["pool.csv"]), "--devices", "gpu0", "gpu1"]),
        ("embedding devices not visible", lambda w: ["--pool_csv", str(w["pool.csv"]), "--devices", "cuda:0",
                                                     "cuda:99"]),
        ("embedding device and devices", lambda w: ["--pool_csv", str(w["pool.csv"]), "--device", "cpu",
                                                    "--devices", "cpu", "cpu"]),
    ])

    def ret(w):
        return ["--pool_embeddings", str(w["emb_pool"]), "--meddec_embeddings", str(w["emb_meddec"]),
                "--pool_csv", str(w["pool.csv"]), "--query_splits", str(w["val_split"]),
                "--output", str(w["root"] / "cand.csv")]
    add(retrieve.main, ret, [(f"retrieve {n}", v) for n, v in config_variants()])
    add(retrieve.main, ret, [
        ("retrieve top_k 0", lambda w: ["--top_k", "0"]),
        ("retrieve top_k -3", lambda w: ["--top_k", "-3"]),
        ("retrieve per_note 0", lambda w: ["--per_note", "0"]),
        ("retrieve query_block 0", lambda w: ["--query_block", "0"]),
        ("retrieve missing cache", lambda w: ["--pool_embeddings", str(w["folder"])]),
        ("retrieve query not cached", lambda w: ["--query_splits", str(w["train_split"])]),
        ("retrieve pool csv differs", lambda w: ["--pool_csv", str(w["dup.csv"])]),
    ])

    def explore(w):
        return ["explore", "--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]),
                "--report", str(w["root"] / "r.json"), "--plot", ""]
    add(dynamic_threshold.main, explore, [*[(f"explore {n}", v) for n, v in bad_file_variants("--val_predictions")],
                                          *[(f"explore {n}", v) for n, v in config_variants()]])
    add(dynamic_threshold.main, explore, [
        ("explore bins 0", lambda w: ["--val_predictions", str(w["val_out.csv"]), "--bins", "0"]),
        ("explore quantile 1.5", lambda w: ["--val_predictions", str(w["val_out.csv"]), "--quantiles", "0.1", "1.5"]),
        ("explore not an output", lambda w: ["--val_predictions", str(w["pool.csv"])]),
    ])

    def select(w):
        return ["select", "--train_csv", str(w["train_csv"]), "--output", str(w["root"] / "mixed.csv")]
    add(dynamic_threshold.main, select, [*[(f"select {n}", v) for n, v in bad_file_variants("--pool_predictions")],
                                         *[(f"select {n}", v) for n, v in config_variants()]])
    add(dynamic_threshold.main, select, [
        ("select threshold 1.5", lambda w: ["--pool_predictions", str(w["val_out.csv"]), "--threshold", "1.5"]),
        ("select min_spans -1", lambda w: ["--pool_predictions", str(w["val_out.csv"]), "--min_spans", "-1"]),
        ("select overlaps train", lambda w: ["--pool_predictions", str(w["val_out.csv"]), "--train_csv",
                                             str(w["val_csv"])]),
        ("select unknown pseudo target", lambda w: ["--pool_predictions", str(w["val_out.csv"]), "--pseudo_target",
                                                    "gold"]),
        ("select unknown empty entropy", lambda w: ["--pool_predictions", str(w["val_out.csv"]),
                                                    "--empty_output_entropy", "one"]),
        ("select num_tokens not a number", lambda w: ["--pool_predictions", str(w["bad_tokens.csv"])]),
    ])
    out.append(("dynamic_threshold no command", dynamic_threshold.main, lambda w: ["frobnicate"]))
    # baselines/train_bert.py, dataset/generate.py, scripts/demo.py
    def bert(w):
        return ["--model", str(w["folder"]), "--output_dir", str(w["root"] / "out_bert")]
    add(train_bert.main, bert, [*[(f"train_bert {n}", v) for n, v in bad_file_variants("--train_csv")],
                                *[(f"train_bert {n}", v) for n, v in config_variants()]])
    add(train_bert.main, bert, [
        ("train_bert window 4", lambda w: ["--train_csv", str(w["train_csv"]), "--window", "4"]),
        ("train_bert predict missing", lambda w: ["--train_csv", "", "--predict_csv", str(w["root"] / "x.csv")]),
        ("train_bert predict dup", lambda w: ["--train_csv", "", "--predict_csv", str(w["dup.csv"])]),
        ("train_bert unknown overlap rule", lambda w: ["--train_csv", str(w["train_csv"]), "--overlap_rule", "last"]),
        ("train_bert unknown orphan rule", lambda w: ["--train_csv", str(w["train_csv"]), "--orphan_inside", "keep"]),
        ("train_bert eval csv missing", lambda w: ["--train_csv", str(w["train_csv"]), "--eval_csv",
                                                   str(w["root"] / "x.csv")]),
        ("train_bert eval csv without gold", lambda w: ["--train_csv", str(w["train_csv"]), "--eval_csv",
                                                        str(w["pool.csv"])]),
    ])

    def gen(w):
        return ["--out_dir", str(w["root"] / "gen")]
    add(generate.main, gen, [
        ("generate negative notes", lambda w: ["--n_train", "-1"]),
        ("generate mean_chars 0", lambda w: ["--mean_chars", "0"]),
        ("generate text size", lambda w: ["--n_val", "many"]),
        ("generate no out_dir", lambda w: ["--out_dir"]),
        ("generate out_dir is a file", lambda w: ["--out_dir", str(w["a_file"])]),
        *[(f"generate {n}", v) for n, v in config_variants()],
    ])
    add(demo.main, lambda w: ["--work_dir", str(w["root"] / "demo")], [
        ("demo bad profile", lambda w: ["--profile", "huge"]),
        *[(f"demo {n}", v) for n, v in config_variants()],
    ])
    return out


CASES = cases()


def test_the_suite_covers_at_least_200_bad_inputs():
    assert len(CASES) >= 200
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, main, argv", CASES, ids=[name for name, _, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(name, main, argv, ws, capsys):
    before = _files(ws["root"])
    code = main(argv(ws))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (code, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert _files(ws["root"]) == before
