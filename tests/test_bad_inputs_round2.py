"""Bad input and faults, second round (issue 24): outputs over inputs, values never refused, files that are not
plain files, recipes that set the environment, uploads hiding text, and caches or studies reused after what they
were computed from changed.

The one-line contract is the same as ``tests/test_bad_inputs.py`` (whose workspace this reuses): exit code 2, one
``error:`` line on stderr, no traceback, and no file of the workspace created, changed or removed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from test_bad_inputs import _files, ws  # noqa: F401 - the shared workspace fixture

from baselines import train_bert
from dataset import generate
from ensemble import mbr, optimize
from pseudolabels import dynamic_threshold, embedding, extract_unlabel, retrieve
from scripts import inference, push_to_hub, train_dft, train_grpo
from utils import gt_to_tag, pred_to_offset
from utils.fileio import InputError
from utils.paths import load_module_from_path

evaluate = load_module_from_path("evaluate/evaluate.py", "lamar_evaluate_cli_r2")
compare = load_module_from_path("evaluate/compare.py", "lamar_compare_cli_r2")
errors = load_module_from_path("evaluate/errors.py", "lamar_errors_cli_r2")
viewer = load_module_from_path("evaluate/viewer.py", "lamar_viewer_cli_r2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def w2(ws):  # noqa: F811 - the imported fixture
    """The round-1 workspace plus the files round 2 points at: special files, odd encodings, deep JSON, links,
    a model folder, upload folders hiding text, a synthetic corpus holding a user's file."""
    from dataset.synthetic import generate_corpus

    root = ws["root"]
    r2 = root / "r2"
    r2.mkdir()
    special = r2 / "special"
    special.mkdir()
    os.mkfifo(special / "fifo.csv")
    unreadable = r2 / "unreadable.csv"
    unreadable.write_text("file_id,raw_text\n1_2_3,x\n", encoding="utf-8")
    unreadable.chmod(0)
    (r2 / "utf16_split.txt").write_bytes("\n".join(ws["val_split"].read_text().split()).encode("utf-16"))
    (r2 / "latin1_split.txt").write_bytes("caf\xe9_1_1\n".encode("latin-1"))
    (r2 / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    (r2 / "dup_column.csv").write_text("file_id,raw_text,raw_text\n1_2_3,a,b\n", encoding="utf-8")
    (r2 / "dup_column_tagged.csv").write_text("file_id,raw_text,gold_span,gold_offsets,gold_span\n1_2_3,a,b,[],c\n",
                                              encoding="utf-8")
    (r2 / "escape.json").write_text(json.dumps([{"file_name": "../../secret", "predictions": [
        {"start_offset": 0, "end_offset": 7, "category": 1}]}]), encoding="utf-8")
    (r2 / "slash_ids.csv").write_text('file_id,raw_text,predicted\n"../x","a note","a note"\n', encoding="utf-8")
    (r2 / "newline_ids.csv").write_text('file_id,raw_text,predicted\n"1_2\n3","a note","a note"\n', encoding="utf-8")
    (root / "secret.txt").write_text("outside the raw text folder", encoding="utf-8")
    huge = "Patient given aspirin 81 mg daily. " * 60_000  # 2.1 million characters, repetitive
    (r2 / "huge_note.csv").write_text(f'file_id,raw_text,predicted\n1_2_3,"{huge}","{huge}"\n', encoding="utf-8")
    for name, text in (("nan_lr.yaml", "learning_rate: .nan\n"), ("inf_int.yaml", "lora_r: .inf\n"),
                       ("float_int.yaml", "lora_r: 2.5\n"), ("maybe_bool.yaml", "dft_guard: maybe\n"),
                       ("true_int.yaml", "lora_r: true\n"), ("env.yaml", "env:\n  PYTHONPATH: /tmp/evil\n"),
                       ("env_endpoint.yaml", "env:\n  HF_ENDPOINT: http://127.0.0.1:9\n"),
                       ("inf_beta.yaml", "beta: .inf\n"), ("neg_seed.yaml", "seed: -1\n")):
        (r2 / name).write_text(text, encoding="utf-8")
    (r2 / "link_to_val.json").symlink_to(ws["val.json"])
    os.link(ws["val.json"], r2 / "hardlink_val.json")
    (r2 / "link_to_noteevents.csv").symlink_to(ws["noteevents"])
    inf_dir = r2 / "inf"
    inf_dir.mkdir()
    (inf_dir / "val_predictions.csv").write_text(ws["pool.csv"].read_text(encoding="utf-8"), encoding="utf-8")
    corpus = generate_corpus(r2 / "corpus", seed=1, n_train=1, n_val=1, n_test=1, n_unlabeled=1, mean_chars=200,
                             mean_spans=2)
    (corpus.root / "my_notes.txt").write_text("the user's own file", encoding="utf-8")
    _upload_folders(r2 / "upload")
    return {**ws, "r2": r2, "fifo": special / "fifo.csv", "unreadable": unreadable, "inf_dir": inf_dir,
            "corpus": corpus.root}


NOTE = "Discharge summary. The patient was started on metoprolol 25 mg for rate control. " * 40


def _upload_folders(root: Path) -> None:
    """One folder per hiding place: a valid tiny model folder whose one file carries a whole note."""
    import zipfile

    import torch
    from safetensors.numpy import save_file

    def base(folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}), encoding="utf-8")
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    save_file({"w": np.zeros(2, dtype=np.float32)}, str(base(root / "st_meta") / "model.safetensors"),
              metadata={"format": "pt", "note": NOTE})
    (base(root / "config_key") / "config.json").write_text(json.dumps({"model_type": "qwen3", "x": NOTE}))
    (base(root / "generation") / "generation_config.json").write_text(json.dumps({"do_sample": False, "n": NOTE}))
    (base(root / "tok_config") / "tokenizer_config.json").write_text(json.dumps({"extra": {"deep": [NOTE]}}))
    (base(root / "vocab") / "vocab.json").write_text(json.dumps({"a": 0, NOTE: 1}))
    (base(root / "added") / "added_tokens.json").write_text(json.dumps({NOTE: 5}))
    (base(root / "merges") / "merges.txt").write_text(f"#version: 0.2\na {NOTE.replace(' ', '')}\n")
    folder = base(root / "torch_member")
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with zipfile.ZipFile(folder / "pytorch_model.bin", "a") as archive:
        archive.writestr("pytorch_model/note.txt", NOTE)
    (base(root / "jinja_comment") / "chat_template.jinja").write_text("{# " + NOTE + " #}{{ messages }}")
    (base(root / "template_in_config") / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{# " + NOTE + " #}{{ messages }}"}))
    (base(root / "card_without_card") / "README.md").write_text(
        "<!-- generated by LAMAR scripts/push_to_hub.py -->\n" + NOTE)
    (base(root / "tokenizer_json") / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}},
                                                                               "normalizer": {"pattern": NOTE}}))


Case = tuple[str, Callable[..., int], Callable[[dict], list[str]]]


def _ev(w):
    return ["--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--split_file", str(w["val_split"])]


def _dft(w):
    return ["--backend", "hf", "--model_name_or_path", str(w["folder"]), "--output_dir", str(w["root"] / "out_dft2")]


def _grpo(w):
    return ["--model_name_or_path", str(w["folder"]), "--output_dir", str(w["root"] / "out_grpo2")]


def _opt(w):
    return ["--gold_csv", "", "--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--split_file", str(w["val_split"]),
            "--storage", "none", "--output", str(w["root"] / "best2.json"), "--quiet", "--no_plots"]


def _inf(w):
    return ["--backend", "transformers", "--model", str(w["folder"])]


# ---- class 3: an output over an input or over another output -------------------------------------------------
OUTPUTS_OVER_INPUTS: list[Case] = [
    ("extract output = noteevents", extract_unlabel.main,
     lambda w: ["--noteevents", str(w["noteevents"]), "--splits", str(w["train_split"]), "--output", str(w["noteevents"])]),
    ("extract output = noteevents via a symlink", extract_unlabel.main,
     lambda w: ["--noteevents", str(w["r2"] / "link_to_noteevents.csv"), "--splits", str(w["train_split"]),
                "--output", str(w["noteevents"])]),
    ("select output = train_csv", dynamic_threshold.main,
     lambda w: ["select", "--pool_predictions", str(w["val_out.csv"]), "--train_csv", str(w["train_csv"]),
                "--output", str(w["train_csv"])]),
    ("select output = pool predictions", dynamic_threshold.main,
     lambda w: ["select", "--pool_predictions", str(w["val_out.csv"]), "--train_csv", str(w["train_csv"]),
                "--output", str(w["val_out.csv"])]),
    ("explore report = val predictions", dynamic_threshold.main,
     lambda w: ["explore", "--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--val_predictions",
                str(w["val_out.csv"]), "--report", str(w["val_out.csv"]), "--plot", ""]),
    ("explore plot = report", dynamic_threshold.main,
     lambda w: ["explore", "--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--val_predictions",
                str(w["val_out.csv"]), "--report", str(w["root"] / "r.json"), "--plot", str(w["root"] / "r.json")]),
    ("push merge over the base model", push_to_hub.main,
     lambda w: ["--repo_id", "me/m", "--dry_run", "--folder", str(w["folder"]), "--adapter", str(w["emb_pool"]),
                "--base_model", str(w["folder"])]),
    ("push merge over the adapter", push_to_hub.main,
     lambda w: ["--repo_id", "me/m", "--dry_run", "--folder", str(w["emb_pool"]), "--adapter", str(w["emb_pool"]),
                "--base_model", str(w["folder"])]),
    ("train_dft into the base-model folder", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--output_dir", str(w["folder"])]),
    ("train_grpo into the base-model folder", train_grpo.main,
     lambda w: [*_grpo(w), "--train_csv", str(w["train_csv"]), "--output_dir", str(w["folder"])]),
    ("train_bert into the model folder", train_bert.main,
     lambda w: ["--model", str(w["folder"]), "--train_csv", str(w["train_csv"]), "--output_dir", str(w["folder"])]),
    ("evaluate output = predictions", evaluate.main,
     lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--output", str(w["val.json"])]),
    ("evaluate output = predictions via a symlink", evaluate.main,
     lambda w: [*_ev(w), "--predictions", str(w["r2"] / "link_to_val.json"), "--output", str(w["val.json"])]),
    ("evaluate output = predictions via a hard link", evaluate.main,
     lambda w: [*_ev(w), "--predictions", str(w["r2"] / "hardlink_val.json"), "--output", str(w["val.json"])]),
    ("evaluate output = split file", evaluate.main,
     lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--output", str(w["val_split"])]),
    ("compare output = a predictions file", compare.main,
     lambda w: [*_ev(w), "--predictions", str(w["val.json"]), str(w["val.json"]), "--names", "a", "b",
                "--output", str(w["val.json"])]),
    ("errors output_dir = gold_dir", errors.main,
     lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--output_dir", str(w["gold"])]),
    ("pred_to_offset output = input", pred_to_offset.main,
     lambda w: ["--input", str(w["val_out.csv"]), "--output", str(w["val_out.csv"])]),
    ("pred_to_offset report = output", pred_to_offset.main,
     lambda w: ["--input", str(w["val_out.csv"]), "--output", str(w["root"] / "p.json"), "--report",
                str(w["root"] / "p.json")]),
    ("gt_to_tag out_dir = gold_dir", gt_to_tag.main,
     lambda w: ["--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--train_split", str(w["train_split"]),
                "--val_split", str(w["val_split"]), "--out_dir", str(w["gold"])]),
    ("inference output = input", inference.main,
     lambda w: [*_inf(w), "--input", str(w["pool.csv"]), "--output", str(w["pool.csv"])]),
    ("inference output = model folder", inference.main,
     lambda w: [*_inf(w), "--input", str(w["pool.csv"]), "--output", str(w["folder"])]),
    ("inference output_dir file = val_csv", inference.main,
     lambda w: [*_inf(w), "--val_csv", str(w["inf_dir"] / "val_predictions.csv"), "--output_dir", str(w["inf_dir"])]),
    ("inference output's JSON = predictions of another output", inference.main,
     lambda w: [*_inf(w), "--input", str(w["pool.csv"]), str(w["dup.csv"]), "--output", str(w["root"] / "o.csv"),
                str(w["root"] / "o.json")]),
    ("mbr output = predictions", mbr.main,
     lambda w: ["--predictions", str(w["val.json"]), "--output", str(w["val.json"])]),
    ("mbr explain = output", mbr.main,
     lambda w: ["--predictions", str(w["val.json"]), "--output", str(w["root"] / "m.json"), "--explain",
                str(w["root"] / "m.json")]),
    ("mbr output = thresholds json", mbr.main,
     lambda w: ["--predictions", str(w["val.json"]), "--thresholds_json", str(w["thresholds_range.json"]),
                "--output", str(w["thresholds_range.json"])]),
    ("optimize output = study file", optimize.main,
     lambda w: [*_opt(w), "--predictions", str(w["val.json"]), "--storage", f"sqlite:///{w['root'] / 's.db'}",
                "--output", str(w["root"] / "s.db")]),
    ("optimize history plot = output", optimize.main,
     lambda w: [*_opt(w), "--predictions", str(w["val.json"]), "--history_plot", str(w["root"] / "best2.json")]),
    ("optimize output = predictions", optimize.main,
     lambda w: [*_opt(w), "--predictions", str(w["val.json"]), "--output", str(w["val.json"])]),
    ("optimize apply output = applied predictions", optimize.main,
     lambda w: [*_opt(w), "--predictions", str(w["val.json"]), "--apply", str(w["val.json"]), "--apply_output",
                str(w["val.json"])]),
    ("embedding pool_out = meddec_out", embedding.main,
     lambda w: ["--model", str(w["folder"]), "--pool_csv", str(w["pool.csv"]), "--pool_out", str(w["root"] / "e"),
                "--meddec_out", str(w["root"] / "e"), "--meddec_splits", str(w["train_split"])]),
    ("embedding pool_out = model folder", embedding.main,
     lambda w: ["--model", str(w["folder"]), "--pool_csv", str(w["pool.csv"]), "--pool_out", str(w["folder"]),
                "--meddec_splits", str(w["train_split"]), "--sources", "pool"]),
    ("retrieve output = pool csv", retrieve.main,
     lambda w: ["--pool_embeddings", str(w["emb_pool"]), "--meddec_embeddings", str(w["emb_meddec"]), "--pool_csv",
                str(w["pool.csv"]), "--query_splits", str(w["val_split"]), "--output", str(w["pool.csv"])]),
    ("viewer output = raw text folder", viewer.main,
     lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--output", str(w["raw"])]),
    ("generate over a corpus holding a user's file", generate.main,
     lambda w: ["--out_dir", str(w["corpus"]), "--n_train", "1", "--n_val", "1", "--n_test", "1", "--n_unlabeled", "1",
                "--mean_chars", "200", "--mean_spans", "2"]),
]

# ---- class 4: recipes set options only; uploads hide no text ---------------------------------------------------
RECIPES_AND_UPLOADS: list[Case] = [
    *[(f"{name} recipe env: PYTHONPATH", main, (lambda b: lambda w: [*b(w), "--config", str(w["r2"] / "env.yaml")])(b))
      for name, main, b in (("train_dft", train_dft.main, _dft), ("train_grpo", train_grpo.main, _grpo),
                            ("inference", inference.main, _inf), ("evaluate", evaluate.main, _ev),
                            ("optimize", optimize.main, _opt))],
    ("push recipe env: HF_ENDPOINT", push_to_hub.main,
     lambda w: ["--repo_id", "me/m", "--folder", str(w["folder"]), "--config", str(w["r2"] / "env_endpoint.yaml")]),
    *[(f"push dry run: a note in {where}", push_to_hub.main,
       (lambda where: lambda w: ["--repo_id", "me/m", "--dry_run", "--folder", str(w["r2"] / "upload" / where)])(where))
      for where in ("st_meta", "config_key", "generation", "tok_config", "vocab", "added", "merges", "torch_member",
                    "tokenizer_json", "jinja_comment", "template_in_config")],
    ("push dry run: a note in the model card with --model_card false", push_to_hub.main,
     lambda w: ["--repo_id", "me/m", "--dry_run", "--model_card", "false", "--folder",
                str(w["r2"] / "upload" / "card_without_card")]),

]

# ---- class 5: values and files that used to be accepted --------------------------------------------------------
VALUES_AND_FILES: list[Case] = [
    ("train_dft lr inf", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--learning_rate", "inf"]),
    ("train_dft lr nan", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--learning_rate", "nan"]),
    ("train_dft lr -inf", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--learning_rate", "-inf"]),
    ("train_grpo beta nan", train_grpo.main, lambda w: [*_grpo(w), "--train_csv", str(w["train_csv"]), "--beta", "nan"]),
    ("train_grpo recipe beta .inf", train_grpo.main,
     lambda w: [*_grpo(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "inf_beta.yaml")]),
    ("train_grpo temperature inf", train_grpo.main,
     lambda w: [*_grpo(w), "--train_csv", str(w["train_csv"]), "--temperature", "inf"]),
    ("train_dft recipe lr .nan", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "nan_lr.yaml")]),
    ("train_dft recipe int 2.5", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "float_int.yaml")]),
    ("train_dft recipe int .inf", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "inf_int.yaml")]),
    ("train_dft recipe int true", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "true_int.yaml")]),
    ("train_dft recipe bool maybe", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "maybe_bool.yaml")]),
    ("train_dft recipe seed -1", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--config", str(w["r2"] / "neg_seed.yaml")]),
    ("train_dft seed -1", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--seed", "-1"]),
    ("train_dft seed 2**32", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--seed", str(2**32)]),
    ("train_dft dropout 1.5", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--lora_dropout", "1.5"]),
    ("train_dft dropout -0.1", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--lora_dropout", "-0.1"]),
    ("train_dft max_length 0", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["train_csv"]), "--max_length", "0"]),
    ("train_grpo completion length 0", train_grpo.main,
     lambda w: [*_grpo(w), "--train_csv", str(w["train_csv"]), "--max_completion_length", "0"]),
    ("embedding max_seq_length 0", embedding.main,
     lambda w: ["--model", str(w["folder"]), "--pool_csv", str(w["pool.csv"]), "--sources", "pool", "--max_seq_length",
                "0", "--pool_out", str(w["root"] / "e2")]),
    ("evaluate seed -1", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--bootstrap", "10",
                                                   "--seed", "-1"]),
    ("evaluate bootstrap 1e12", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--bootstrap",
                                                          "1000000000000"]),
    ("evaluate confidence nan", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--bootstrap",
                                                          "10", "--confidence", "nan"]),
    ("compare bootstrap 1e12", compare.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), str(w["val.json"]),
                                                        "--names", "a", "b", "--bootstrap", "1000000000000"]),
    ("optimize seed -1", optimize.main, lambda w: [*_opt(w), "--predictions", str(w["val.json"]), "--seed", "-1"]),
    ("optimize n_trials 1e12", optimize.main, lambda w: [*_opt(w), "--predictions", str(w["val.json"]), "--n_trials",
                                                         "1000000000000"]),
    ("mbr t_pair nan", mbr.main, lambda w: ["--predictions", str(w["val.json"]), "--output", str(w["root"] / "m2.json"),
                                            "--t_pair", "nan"]),
    ("generate n_train 1e12", generate.main, lambda w: ["--out_dir", str(w["root"] / "g2"), "--n_train", "1000000000000"]),
    ("generate seed -1", generate.main, lambda w: ["--out_dir", str(w["root"] / "g2"), "--seed", "-1"]),
    ("inference max_new_tokens 1e12", inference.main,
     lambda w: [*_inf(w), "--input", str(w["pool.csv"]), "--output", str(w["root"] / "o2.csv"), "--max_new_tokens",
                "1000000000000"]),
    ("inference temperature nan", inference.main,
     lambda w: [*_inf(w), "--input", str(w["pool.csv"]), "--output", str(w["root"] / "o2.csv"), "--temperature", "nan"]),
    ("select threshold nan", dynamic_threshold.main,
     lambda w: ["select", "--pool_predictions", str(w["val_out.csv"]), "--train_csv", str(w["train_csv"]),
                "--output", str(w["root"] / "mix2.csv"), "--threshold", "nan"]),
    # files that are not plain files
    ("evaluate predictions a FIFO", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["fifo"])]),
    ("train_dft train_csv a FIFO", train_dft.main, lambda w: [*_dft(w), "--train_csv", str(w["fifo"])]),
    ("extract noteevents a FIFO", extract_unlabel.main,
     lambda w: ["--noteevents", str(w["fifo"]), "--splits", str(w["train_split"]), "--output", str(w["root"] / "u.csv")]),
    ("inference input a FIFO", inference.main,
     lambda w: [*_inf(w), "--input", str(w["fifo"]), "--output", str(w["root"] / "o3.csv")]),
    ("embedding pool csv a FIFO", embedding.main,
     lambda w: ["--model", str(w["folder"]), "--pool_csv", str(w["fifo"]), "--sources", "pool", "--pool_out",
                str(w["root"] / "e3")]),
    ("mbr predictions a FIFO", mbr.main, lambda w: ["--predictions", str(w["fifo"]), "--output", str(w["root"] / "m3.json")]),
    ("config a FIFO", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--config", str(w["fifo"])]),
    ("evaluate predictions unreadable", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["unreadable"])]),
    ("pred_to_offset input unreadable", pred_to_offset.main,
     lambda w: ["--input", str(w["unreadable"]), "--output", str(w["root"] / "p3.json")]),
    ("config unreadable", train_dft.main, lambda w: [*_dft(w), "--config", str(w["unreadable"])]),
    # encodings, nesting, columns, ids
    ("evaluate split UTF-16", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--split_file",
                                                        str(w["r2"] / "utf16_split.txt")]),
    ("evaluate split latin-1", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["val.json"]), "--split_file",
                                                         str(w["r2"] / "latin1_split.txt")]),
    ("gt_to_tag split UTF-16", gt_to_tag.main,
     lambda w: ["--gold_dir", str(w["gold"]), "--raw_text_dir", str(w["raw"]), "--train_split",
                str(w["r2"] / "utf16_split.txt"), "--val_split", str(w["val_split"]), "--out_dir", str(w["root"] / "g3")]),
    ("evaluate predictions nested 100k deep", evaluate.main, lambda w: [*_ev(w), "--predictions", str(w["r2"] / "deep.json")]),
    ("mbr predictions nested 100k deep", mbr.main,
     lambda w: ["--predictions", str(w["r2"] / "deep.json"), "--output", str(w["root"] / "m4.json")]),
    ("mbr thresholds nested 100k deep", mbr.main,
     lambda w: ["--predictions", str(w["val.json"]), "--thresholds_json", str(w["r2"] / "deep.json"), "--output",
                str(w["root"] / "m4.json")]),
    ("inference duplicated column", inference.main,
     lambda w: [*_inf(w), "--input", str(w["r2"] / "dup_column.csv"), "--output", str(w["root"] / "o4.csv")]),
    ("embedding duplicated column", embedding.main,
     lambda w: ["--model", str(w["folder"]), "--pool_csv", str(w["r2"] / "dup_column.csv"), "--sources", "pool",
                "--pool_out", str(w["root"] / "e4")]),
    ("train_dft duplicated column", train_dft.main,
     lambda w: [*_dft(w), "--train_csv", str(w["r2"] / "dup_column_tagged.csv")]),
    ("evaluate predicted id escaping raw_text_dir", evaluate.main,
     lambda w: [*_ev(w)[:4], "--predictions", str(w["r2"] / "escape.json")]),
    ("viewer predicted id escaping raw_text_dir", viewer.main,
     lambda w: [*_ev(w)[:4], "--predictions", str(w["r2"] / "escape.json"), "--output", str(w["root"] / "v2.html")]),
    ("errors predicted id escaping raw_text_dir", errors.main,
     lambda w: [*_ev(w)[:4], "--predictions", str(w["r2"] / "escape.json"), "--output_dir", str(w["root"] / "er2")]),
    ("mbr predicted id escaping raw_text_dir", mbr.main,
     lambda w: ["--predictions", str(w["r2"] / "escape.json"), "--raw_text_dir", str(w["raw"]), "--output",
                str(w["root"] / "m5.json")]),
    ("pred_to_offset id with a path separator", pred_to_offset.main,
     lambda w: ["--input", str(w["r2"] / "slash_ids.csv"), "--output", str(w["root"] / "p4.json"), "--raw_text_dir",
                str(w["raw"])]),
    ("pred_to_offset a 2-million-character note", pred_to_offset.main,
     lambda w: ["--input", str(w["r2"] / "huge_note.csv"), "--output", str(w["root"] / "p6.json")]),
    ("inference a 2-million-character note", inference.main,
     lambda w: [*_inf(w), "--input", str(w["r2"] / "huge_note.csv"), "--output", str(w["root"] / "o5.csv")]),
    ("pred_to_offset id with a newline", pred_to_offset.main,
     lambda w: ["--input", str(w["r2"] / "newline_ids.csv"), "--output", str(w["root"] / "p5.json"), "--raw_text_dir",
                str(w["raw"])]),
]

CASES = [*OUTPUTS_OVER_INPUTS, *RECIPES_AND_UPLOADS, *VALUES_AND_FILES]


def test_case_names_are_unique_and_every_class_is_covered():
    assert len({name for name, _, _ in CASES}) == len(CASES)
    assert len(OUTPUTS_OVER_INPUTS) >= 19 and len(RECIPES_AND_UPLOADS) >= 15 and len(VALUES_AND_FILES) >= 40


@pytest.mark.parametrize("name, main, argv", CASES, ids=[name for name, _, _ in CASES])
def test_round2_bad_input_is_one_line_exit_2_and_touches_nothing(name, main, argv, w2, capsys):
    before = _files(w2["root"])
    environment = dict(os.environ)
    code = main(argv(w2))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("WARNING ")]
    assert code == 2, (code, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert _files(w2["root"]) == before
    assert dict(os.environ) == environment  # no recipe sets the environment


def test_outputs_over_inputs_name_both_flags(w2, capsys):
    assert evaluate.main([*_ev(w2), "--predictions", str(w2["r2"] / "link_to_val.json"), "--output",
                          str(w2["val.json"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: <command line>: --output: got {str(w2['val.json'])!r}: is also the input "
                          "--predictions "), err
    assert extract_unlabel.main(["--noteevents", str(w2["noteevents"]), "--splits", str(w2["train_split"]),
                                 "--output", str(w2["noteevents"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: <command line>: --output: got ") and "is also the input --noteevents" in err


def test_generate_keeps_the_users_file(w2):
    assert (w2["corpus"] / "my_notes.txt").read_text(encoding="utf-8") == "the user's own file"


# ---- faults on write ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EDQUOT, "quota")])
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_earlier_output(w2, tmp_path, capsys, monkeypatch, code,
                                                                          words):
    output = tmp_path / "score.json"
    output.write_text("earlier", encoding="utf-8")

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert evaluate.main([*_ev(w2), "--predictions", str(w2["val.json"]), "--output", str(output)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(err) == 1 and err[0].startswith(f"error: {output}: cannot write this output: ") and words in err[0]
    assert output.read_text(encoding="utf-8") == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["score.json"]  # no temporary file left


def test_a_closed_pipe_ends_generate_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "dataset.generate", "--out_dir", str(tmp_path / "c"),
                                "--n_train", "1", "--n_val", "1", "--n_test", "1", "--n_unlabeled", "1",
                                "--mean_chars", "200", "--mean_spans", "2"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader (`| head`) is gone before the summary is printed
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert stderr == ""
    assert (tmp_path / "c" / "NOTEEVENTS.csv").is_file()  # the corpus itself was written whole


def test_a_note_too_long_to_align_whole_is_placed_by_search_with_the_same_spans(monkeypatch):
    """Whole-note alignment grows with output x note length (1 MB: 209 s measured); above MAX_ALIGNED_CELLS the
    spans are found by search near their proportional position instead: on a repetitive note, the same spans."""
    from utils.categories import TAGS
    from utils.tagging import align
    from utils.tagging.locate import locate_spans

    unit = "Patient given aspirin 81 mg daily. "
    note = unit * 300
    output = note.replace("aspirin 81 mg", f"<{TAGS[2]}>aspirin 81 mg</{TAGS[2]}>", 20)
    whole = locate_spans(note, output, locator="align")
    monkeypatch.setattr(align, "MAX_ALIGNED_CELLS", 1000)
    searched = locate_spans(note, output, locator="align")
    assert len(whole.spans) == 20 and searched.spans == whole.spans
    assert set(searched.matches) == {"search"}


def test_note_ids_never_name_a_path_outside_the_folder(tmp_path):
    from utils.guards import note_text_path

    assert note_text_path(tmp_path, "12_34_56") == tmp_path / "12_34_56.txt"
    assert note_text_path(tmp_path, "12_34_56-annotator") == tmp_path / "12_34_56-annotator.txt"
    for bad in ("../../x", "a/b", "a\\b", "..", "1_2\n3", "x\0y", ""):
        with pytest.raises(InputError, match="not a note id"):
            note_text_path(tmp_path, bad)


# ---- class 1: caches and studies keyed on content ----------------------------------------------------------------


def _model_folder(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "qwen3"}', encoding="utf-8")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_inference_cache_follows_the_weights_not_the_path(tmp_path):
    from utils.configs.pipeline import InferenceArguments
    from utils.generation.runner import PartialWriter, load_partial, resume_settings

    model = _model_folder(tmp_path / "model", b"A" * 64)
    args = InferenceArguments(model=str(model), backend="transformers", input=[], output=[])
    settings = resume_settings(args)
    partial = tmp_path / "out.csv.partial.jsonl"
    writer = PartialWriter(partial, settings, fresh=True)
    writer.write([{"file_id": "1_2_3", "text_sha256": "x"}])
    writer.close()
    assert load_partial(partial, resume_settings(args)) == {"1_2_3": {"file_id": "1_2_3", "text_sha256": "x"}}
    os.utime(model / "model.safetensors", (1, 1))  # touched, same bytes: still the same model
    assert resume_settings(args) == settings
    (model / "model.safetensors").write_bytes(b"B" * 64)  # replaced at the same path, same size
    with pytest.raises(InputError, match=r"other settings or another model \(model_content differ\)"):
        load_partial(partial, resume_settings(args))
    (model / "model.safetensors").write_bytes(b"A" * 64)
    for field, value in (("dtype", "float32"), ("backend", "vllm"), ("batch_size", 3), ("vllm_kwargs", '{"a": 1}')):
        changed = InferenceArguments(**{**vars(args), field: value})
        with pytest.raises(InputError, match=rf"\({field} differ\)"):
            load_partial(partial, resume_settings(changed))


def test_embedding_cache_refuses_new_texts_and_redoes_a_cut_shard(tmp_path):
    from utils.pseudolabels.embedding import embed_batches, load_embeddings, prepare_cache

    out = prepare_cache(tmp_path / "c", {"model": "m", "shard_size": 2})
    batches = [(["1_1_1", "2_2_2"], ["first", "second"]), (["3_3_3"], ["third"])]
    encode = lambda texts: np.arange(len(texts) * 3, dtype=np.float32).reshape(-1, 3) + len(texts[0])  # noqa: E731
    assert embed_batches(batches, out, encode, progress=False) == 2
    ids, vectors = load_embeddings(out)
    changed = [(["1_1_1", "2_2_2"], ["first", "SECOND"]), (["3_3_3"], ["third"])]
    with pytest.raises(InputError, match=r"shard_00000.texts.sha256: note '2_2_2': its text changed"):
        embed_batches(changed, out, encode, progress=False)
    npy = out / "shard_00001.npy"
    npy.write_bytes(npy.read_bytes()[:-4])  # cut short (a full disk, a copy)
    with pytest.raises(InputError, match="vector file incomplete or damaged"):
        load_embeddings(out)
    assert embed_batches(batches, out, encode, progress=False) == 1  # only the cut shard is embedded again
    again_ids, again = load_embeddings(out)
    assert again_ids == ids and np.array_equal(again, vectors)
    (out / "shard_00000.texts.sha256").unlink()  # a cache that cannot show what it embedded
    with pytest.raises(InputError, match="cannot show which note texts it embedded"):
        load_embeddings(out)


def test_embedding_meta_follows_the_model_content(tmp_path):
    from utils.pseudolabels.embedding import encoder_content
    from utils.configs.pipeline import EmbeddingArguments

    model = _model_folder(tmp_path / "enc", b"A" * 32)
    args = EmbeddingArguments(model=str(model), sources=["pool"], meddec_splits=[], devices=[])
    before = encoder_content(args)
    (model / "model.safetensors").write_bytes(b"C" * 32)
    assert encoder_content(args)["model_content"] != before["model_content"]
    assert encoder_content(EmbeddingArguments(**{**vars(args), "dtype": "float16"}))["dtype"] == "float16"


def test_retrieve_refuses_new_pool_texts_with_old_vectors(w2, tmp_path, capsys):
    pool = tmp_path / "pool.csv"
    pool.write_text(w2["pool.csv"].read_text(encoding="utf-8").replace("second pool note", "an edited note"),
                    encoding="utf-8")
    code = retrieve.main(["--pool_embeddings", str(w2["emb_pool"]), "--meddec_embeddings", str(w2["emb_meddec"]),
                          "--pool_csv", str(pool), "--query_splits", str(w2["val_split"]), "--top_k", "2",
                          "--output", str(tmp_path / "cand.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "row 2: the text of '9_9_2' differs from the one embedded" in err
    assert not (tmp_path / "cand.csv").exists()


@pytest.mark.slow
def test_a_study_resumed_under_another_punkt_model_is_refused(w2, tmp_path, capsys, offline_punkt_model):
    from utils.metric.punkt import train_punkt_model, use_nltk_data_dir

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = ["--gold_csv", "", "--gold_dir", str(w2["gold"]), "--raw_text_dir", str(w2["raw"]),
            "--split_file", str(w2["val_split"]),
            "--predictions", str(w2["val.json"]), "--storage", storage, "--output", str(tmp_path / "best.json"),
            "--quiet", "--no_plots", "--n_trials", "2"]
    assert optimize.main(argv) == 0
    other = tmp_path / "nltk_other"
    train_punkt_model(["Dr. Smith saw the pt. today. He left.", "Another text. With sentences."] * 5, other)
    try:
        use_nltk_data_dir(other)
        capsys.readouterr()
        assert optimize.main([*argv[:-1], "4"]) == 2
        err = capsys.readouterr().err
        assert "was tuned on other inputs or settings (punkt_tab differ)" in err
    finally:
        use_nltk_data_dir(offline_punkt_model)


# ---- training: divergence at any step, one run per output folder, a failed run does not block the fix -----------

FAST_DFT = ["--backend", "hf", "--lora_r", "8", "--lora_alpha", "16", "--max_length", "2048", "--report_to", "none",
            "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--dataloader_pin_memory", "false", "--optim", "adamw_torch",
            "--save_strategy", "no", "--dft_guard", "false"]


@pytest.fixture(scope="module")
def tiny_dft(tmp_path_factory):
    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer, write_tiny_tagged_csv

    root = tmp_path_factory.mktemp("tiny_r2")
    rows = write_tiny_tagged_csv(root / "train.csv", n_notes=2, seed=0, mean_chars=150, mean_spans=2)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3)
    return {"csv": root / "train.csv", "model": build_tiny_qwen35(root / "model", tokenizer, num_layers=1, seed=0)}


def _train(tiny, out, *extra):
    return train_dft.main(["--model_name_or_path", str(tiny["model"]), "--train_csv", str(tiny["csv"]),
                           "--output_dir", str(out), *FAST_DFT, *extra])


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_step_it_diverges_and_saves_nothing(tiny_dft, tmp_path, capsys):
    """A finite but absurd learning rate: step 1's loss is finite, the weights it leaves are not (or the next
    loss is not). The run stops there, exit 2, one line, no adapter; the corrected rerun into the same folder runs."""
    out = tmp_path / "run"
    assert _train(tiny_dft, out, "--learning_rate", "1e30", "--warmup_steps", "0", "--max_steps", "4") == 2
    stderr = capsys.readouterr().err  # a progress bar may share the error's line
    err = [line[line.index("error: "):] for line in stderr.replace("\r", "\n").splitlines() if "error: " in line]
    assert len(err) == 1 and f"{out}: step " in err[0] and "training diverged and was stopped" in err[0]
    step = int(err[0].split("step ")[1].split(":")[0])
    assert 1 <= step < 4
    assert not list(out.glob("adapter_model*")) and not (out / "run_config.yaml").exists()
    assert _train(tiny_dft, out, "--learning_rate", "1e-3", "--max_steps", "1") == 0  # the fix is not refused
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_two_trainings_into_one_output_dir_the_second_is_refused(tiny_dft, tmp_path, capsys):
    from utils.training.runs import output_dir_lock

    out = tmp_path / "busy"
    with output_dir_lock(out):  # as if another run were training here
        assert _train(tiny_dft, out, "--max_steps", "1") == 2
    err = capsys.readouterr().err
    assert "another training run is writing this --output_dir right now" in err
    assert not (out / "run_inputs.json").exists()


def test_a_full_disk_while_caching_inference_rows_is_one_line_and_keeps_the_rows_before(tmp_path, monkeypatch):
    from utils.generation.runner import PartialWriter

    partial = tmp_path / "o.csv.partial.jsonl"
    writer = PartialWriter(partial, {"k": 1}, fresh=True)
    writer.write([{"file_id": "1_1_1"}])

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match=r"o.csv.partial.jsonl: cannot write: no space left on the device"):
        writer.write([{"file_id": "2_2_2"}])
    writer.close()
    assert partial.read_text(encoding="utf-8").splitlines()[:2] == ['{"settings": {"k": 1}}', '{"file_id": "1_1_1"}']


def test_the_finite_check_reads_every_trainable_weight_and_only_those():
    import torch

    from utils.training.finite import _trainable_finite

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    assert _trainable_finite(model)
    model[1].bias.data[0] = float("inf")
    assert not _trainable_finite(model)
    model[1].bias.requires_grad_(False)  # a frozen weight is not the run's to check (a base model's own values)
    assert _trainable_finite(model)
