"""A seeded synthetic MedDec corpus in the exact PhysioNet download layout (SPEC section 1).

The real MedDec notes are credentialed data and never on our machines, so every test, benchmark and
smoke run uses this generator instead. It is built to hit the edges of the real data that break
converters and scorers, not to be clinically meaningful:

- MIMIC-III discharge-summary sections and de-identification brackets (``[**2101-10-20**]``),
  abbreviations with periods (``Dr.``, ``p.o.``, ``b.i.d.``), numbered and dashed lists, double spaces;
- CRLF line endings in some notes, non-ASCII characters (``°``, ``µ``, ``é``, ``–``), straight and curly
  quotes (NLTK's tokenizer rewrites ``"`` to ````/``''``, which the official token F1 then cannot find);
- nested, crossing and duplicate spans (same offsets with two categories, and exact duplicates), spans
  that start or end inside a word, include edge punctuation or leading/trailing whitespace, and spans
  over a line break;
- out-of-scope annotations (``TBD``, categories 10 and 11), ids with a trailing ``_`` inside the json
  and ids with an annotator suffix (``123_456_789-anna``) in file names and split files;
- category frequencies ordered like the real data: 3 > 5 > 7 > 6 > 1 > 9 > 2 > 4 > 8.

Notes are assembled from template sentences whose slots are filled at random; spans are marked inside
the templates with ``<cN>...</cN>`` (matched per category, so ``<c3>a <c7>b</c3> c</c7>`` crosses), which
keeps each span a decision-like phrase of a fitting category so that a model can learn something.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
import statistics
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from utils.categories import gold_name
from utils.meddec.corpus import DISCHARGE_CATEGORY, Annotation, MedDecPaths, Note, parse_note_id
from utils.fileio import InputError

TBD = "TBD"
SPLITS = ("train", "val", "test")
ETHNICITIES = ("W", "AA", "Hisp.", "Asian", "NH", "OTHER", "UNKNOWN/NOT SPECIFIED", "UNABLE TO OBTAIN")
ETHNICITY_WEIGHTS = (0.62, 0.12, 0.05, 0.04, 0.02, 0.05, 0.06, 0.04)
LANGUAGES = ("ENGL", "Non-ENGL")
GENDERS = ("M", "F")
NOTEEVENTS_HEADER = (
    "ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
    "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT",
)
MARKER_FILE = ".synthetic_meddec.json"  # marks a folder this module wrote, so it may be replaced
ANNOTATORS = ("anna", "ben", "chloe", "dmitri", "eun")

# ----------------------------------------------------------------------------------------------------
# Vocabulary. A slot value is a string or a function of the note's random generator.

Slot = str | Callable[[random.Random], str]


def _deid_date(rng: random.Random) -> str:
    return f"[**{rng.randint(2100, 2190)}-{rng.randint(1, 12)}-{rng.randint(1, 28)}**]"


def _deid_doctor(rng: random.Random) -> str:
    n = rng.randint(10, 9999)
    return rng.choice((
        f"Dr. [**Last Name (STitle) {n}**]",
        f"Dr. [**First Name (STitle) {n}**] [**Last Name (NamePattern1) **]",
        f"[**Name6 (MD) {n}**] [**Name8 (MD) {rng.randint(10, 999)}**], MD",
        f"Dr. [**Name (NI) {n}**]",
    ))


def _deid_hospital(rng: random.Random) -> str:
    return rng.choice((
        f"[**Hospital1 {rng.randint(1, 99)}**]",
        f"[**Hospital3 {rng.randint(100, 9999)}**] Rehab",
        f"[**Hospital {rng.randint(100, 9999)}**] Nursing Home",
        f"[**Hospital1 {rng.randint(1, 99)}**] [**Hospital1 {rng.randint(100, 999)}**]",
    ))


def _phone(rng: random.Random) -> str:
    return f"[**Telephone/Fax ({rng.randint(1, 3)}) {rng.randint(10, 9999)}**]"


def _number(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(lo, hi))


def _decimal(lo: float, hi: float) -> Callable[[random.Random], str]:
    return lambda rng: f"{rng.uniform(lo, hi):.1f}"


SLOTS: dict[str, tuple[Slot, ...]] = {
    "drug": (
        "aspirin", "metoprolol", "metoprolol succinate", "lisinopril", "warfarin", "Coumadin", "heparin gtt",
        "furosemide", "Lasix", "vancomycin", "ceftriaxone", "levofloxacin", "insulin glargine", "metformin",
        "atorvastatin", "amlodipine", "pantoprazole", "prednisone", "Plavix", "digoxin", "diltiazem",
        "hydralazine", "potassium chloride", "oxycodone", "acetaminophen", "allopurinol", "levothyroxine",
        "Zosyn", "Flagyl", "enoxaparin", "albuterol nebs", "spironolactone", "lactulose", "rifaximin",
    ),
    "dose": ("81 mg", "25 mg", "40 mg IV", "5 mg", "500 mg", "1 g", "20 mEq", "0.125 mg", "100 µg", "12.5 mg", "2 mg"),
    "freq": ("p.o. daily", "b.i.d.", "q.d.", "t.i.d.", "q.h.s.", "q6h p.r.n. pain", "p.o. q.d.", "q8h", "daily"),
    "problem": (
        "community-acquired pneumonia", "acute on chronic systolic heart failure", "NSTEMI", "urosepsis",
        "acute kidney injury", "COPD exacerbation", "upper GI bleed", "hyperkalemia", "atrial fibrillation with RVR",
        "cellulitis of the left lower extremity", "DKA", "hepatic encephalopathy", "C. diff colitis", "delirium",
        "hypotension secondary to sepsis", "type II diabetes mellitus", "pulmonary embolism", "SBP", "anemia",
        "volume overload", "hyponatremia", "CHF exacerbation", "pre-renal azotemia", "aspiration pneumonia",
    ),
    "cause": (
        "poor p.o. intake", "medication non-compliance", "dietary indiscretion", "a UTI", "over-diuresis",
        "NSAID use", "hypovolemia", "an underlying malignancy", "ischemia",
    ),
    "test": (
        "chest x-ray", "CXR", "CT of the abdomen and pelvis", "echocardiogram", "TTE", "blood cultures",
        "urine culture",
        "EKG", "MRI of the head", "LENIs", "ABG", "RUQ ultrasound", "CTA chest", "head CT", "KUB", "U/A",
    ),
    "finding": (
        "no acute intracranial process", "a small left pleural effusion", "an EF of 25–30%", "no evidence of PE",
        "a WBC of 15.2", "a troponin peak of 0.45", "a creatinine of 2.3 from a baseline of 1.1",
        "bilateral lower lobe infiltrates", "moderate mitral regurgitation", "no DVT", "a lactate of 4.1",
        "new ST depressions in V4–V6", "no growth to date", "a hematocrit drop to 24", "a K of 6.1",
    ),
    "short_finding": ("atelectasis", "consolidation", "edema", "a mass", "effusion", "infiltrate"),
    "procedure": (
        "cardiac catheterization", "PCI with a drug-eluting stent to the LAD", "paracentesis", "thoracentesis",
        "hemodialysis", "intubation", "EGD", "colonoscopy", "PICC line placement", "ERCP with stent placement",
        "a right IJ central line", "transfusion of 2 units PRBCs", "bronchoscopy", "a temporary pacemaker",
    ),
    "goal": (
        "rate control", "stroke prevention", "a goal INR of 2.0–3.0", "diuresis to dry weight",
        "blood pressure control", "glycemic control", "pain control", "SBP < 140",
        "a negative fluid balance of 1–2 L daily",
        "HR < 100", "comfort",
    ),
    "service": (
        "Cardiology", "Renal", "GI", "Infectious Disease", "Physical Therapy", "Social Work", "Neurology",
        "Hepatology", "Vascular Surgery", "Psychiatry",
    ),
    "unit": ("MICU", "CCU", "SICU", "floor", "step-down unit"),
    "time": ("1 week", "2 weeks", "[**1-20**] weeks", "3 days", "1 month", "4–6 weeks", "10 days"),
    "advice": (
        "avoid heavy lifting for 6 weeks", "weigh yourself every morning",
        "call your doctor if your weight goes up more than 3 lbs", "keep your incision clean and dry",
        "do not drive while taking oxycodone", "follow a 2 gram sodium diet", "limit fluid intake to 1.5 liters daily",
        "return to the ED if you experience chest pain, shortness of breath, or fever > 101.5°F",
        "avoid alcohol", "continue to use your incentive spirometer", "do not swim or take a bath for 2 weeks",
        "check your blood sugars before meals", "wear your TEDs while out of bed",
    ),
    "complaint": (
        "shortness of breath", "chest pain", "fever", "abdominal pain", "confusion", "melena", "syncope", "fall",
    ),
    "pmh": (
        "CAD s/p CABG", "HTN", "HLD", "DM2", "CKD stage III", "COPD on 2L home O2", "atrial fibrillation",
        "h/o CVA", "OSA on CPAP", "cirrhosis", "hypothyroidism", "GERD", "BPH", "depression",
    ),
    "age": (_number(40, 95),),
    "hr": (_number(55, 130),),
    "sbp": (_number(85, 185),),
    "dbp": (_number(45, 105),),
    "rr": (_number(12, 28),),
    "sat": (_number(88, 100),),
    "temp": (_decimal(97.0, 102.5),),
    "lab": (_decimal(0.5, 15.0),),
    "date": (_deid_date,),
    "dr": (_deid_doctor,),
    "hospital": (_deid_hospital,),
    "phone": (_phone,),
    "n": (_number(1, 4),),
}

PRONOUNS = {
    "M": {"he": "he", "his": "his", "him": "him", "man": "man", "mr": "Mr."},
    "F": {"he": "she", "his": "her", "him": "her", "man": "woman", "mr": "Ms."},
}

# ----------------------------------------------------------------------------------------------------
# Template sentences, by the category of their main span. ``<cN>``/``</cN>`` mark spans (``<cT>`` = TBD).

DECISIONS: dict[int, tuple[str, ...]] = {
    3: (
        "{He} was diagnosed with <c3>{problem}</c3>.",
        "{He} was felt to have <c3>{problem}</c3>, likely <c3>secondary to {cause}</c3>.",
        "<c3>{Problem} was thought to be due to {cause}</c3>.",
        "{His} presentation was most consistent with <c3>{problem}</c3>.",
        "<c3>Likely {problem}</c3> given <c7>{finding}</c7>.",
        "Etiology of <c3>{problem}</c3> was felt to be multifactorial.",
        "<c3>{Problem}</c3> - resolved.",
        "<c3>{Problem}, improved</c3>.",
        "This was attributed to <c3>{cause}</c3>.",
        "<c3>Unlikely to be {problem}</c3> as {he} remained afebrile.",
    ),
    5: (
        "<c5>{Drug} {dose} {freq} was started</c5>.",
        "{He} was <c5>started on {drug}</c5> for <c3>{problem}</c3>.",
        "<c5>{Drug} was held</c5> in the setting of <c3>{problem}</c3>.",
        "<c5>Continue {drug} for <c4>{goal}</c4></c5>.",
        "<c5>{His} home {drug} was discontinued</c5> due to <c3>{problem}</c3>.",
        "<c5>Increased {drug} to {dose} {freq}</c5>.",
        "{He} was <c5>transitioned to p.o. {drug}</c5> prior to discharge.",
        "<c5>Completed a 7-day course of {drug}</c5>.",
        "<c5>Restarted {drug}</c5> on {date}.",
        "<c5>{Drug} was titrated up</c5> as tolerated.",
        "<c5>Pt. was given {drug} {dose}</c5> with good effect.",
    ),
    7: (
        "{Test} showed <c7>{finding}</c7>.",
        "<c7>{Test} was negative</c7>.",
        "<c7>Cultures remained no growth to date</c7>.",
        "<c7>Troponins were trended and peaked at 0.{n}{n}</c7>.",
        "<c7>{Test} revealed {finding}</c7>, consistent with <c3>{problem}</c3>.",
        "Labs were notable for <c7>{finding}</c7>.",
        "<c7>{Test} was unremarkable</c7>.",
        "Repeat {test} demonstrated <c7>{finding}</c7>.",
    ),
    6: (
        "{He} <c6>underwent {procedure}</c6>.",
        "<c6>{Procedure} was performed</c6> on {date} without complications.",
        "{He} <c6>was intubated for airway protection</c6>.",
        "<c6>{He} received {procedure}</c6>.",
        "<c6>Plan for {procedure}</c6> was discussed with the family.",
        "<c6>{Procedure} was not pursued</c6> given {his} goals of care.",
    ),
    1: (
        "{He} was <c1>admitted to the {service} service</c1>.",
        "{He} was <c1>transferred to the {unit}</c1> for closer monitoring.",
        "<c1>Called out to the floor</c1> on {date}.",
        "<c1>Discharged to {hospital} for rehabilitation</c1>.",
        "<c1>Follow up with {dr} in {time}</c1>.",
        "<c1>{He} will see {dr} in clinic</c1>.",
    ),
    9: (
        "<c9>Advised to {advice}</c9>.",
        "{He} was counseled to <c9>{advice}</c9>.",
        "<c9>Fall precautions</c9> were maintained.",
        "<c9>Aspiration precautions</c9>.",
    ),
    2: (
        "<c2>{Service} was consulted</c2> for <c3>{problem}</c3>.",
        "<c2>Obtained {test}</c2> to <c2>rule out {problem}</c2>.",
        "<c2>Blood and urine cultures were sent</c2>.",
        "<c2>{Test} was ordered</c2>.",
        "<c2>Checked {test}</c2>, which <c7>was unremarkable</c7>.",
    ),
    4: (
        "with the goal of <c4>{goal}</c4>.",
        "<c4>Goal INR 2–3</c4>.",
        "<c4>Target {goal}</c4>.",
        "<c5>{Drug} was uptitrated</c5> for <c4>{goal}</c4>.",
    ),
    8: (
        "<c8>{Procedure} was deferred to the outpatient setting</c8>.",
        "<c8>Decision regarding {procedure} will be made at follow up</c8>.",
        "<c8>Will hold off on {test} until {time}</c8>.",
    ),
}

INSTRUCTIONS: dict[int, tuple[str, ...]] = {
    9: (
        "Please <c9>{advice}</c9>.",
        "- <c9>{Advice}</c9>",
        "<c9>Do not take NSAIDs such as \"ibuprofen\" or “Aleve”</c9>.",
        "You should <c9>{advice}</c9>.",
        "<c9>It’s important to {advice}</c9>.",
    ),
    5: (
        "<c5>We started {drug} {dose} {freq}</c5>.",
        "<c5>Please stop taking {drug}</c5>.",
        "<c5>Your {drug} dose was changed to {dose}</c5>.",
        "- <c5>STOP {drug}</c5>",
    ),
    1: (
        "<c1>Please follow up with your PCP {dr} within {time}</c1>.",
        "<c1>Call {dr}'s office at {phone} to schedule an appointment</c1>.",
    ),
    2: (
        "<c2>Please have your {test} repeated in {time}</c2>.",
        "<c2>Have your INR checked on {date}</c2>.",
    ),
    8: ("<c8>Your {test} will be repeated at your follow up visit</c8>.",),
    4: ("Our goal is <c4>{goal}</c4>.",),
}

# Crossing, nested, out-of-scope, quoted and multi-line spans: every note gets some (forced below).
CROSSING = (
    "<c3>The prior {test} suggested <c7>{short_finding}</c3> – density at the left base could not be evaluated</c7>.",
    "<c7>{Test} showed <c3>{finding}</c7> concerning for {problem}</c3>.",
    "<c5>{He} was started on {drug} for <c3>presumed {problem}</c5>, which was later ruled out</c3>.",
)
NESTED = (
    "<c5>Continue {drug} for <c4>{goal}</c4></c5>.",
    "<c3>{Problem} <c7>with {finding}</c7></c3>.",
    "<c6>{He} underwent {procedure} <c3>for {problem}</c3></c6>.",
)
OUT_OF_SCOPE = (
    "<c10>{His} insurance would not cover {drug}</c10>, so it was changed.",
    "<c10>Health care proxy form was signed</c10>.",
    "<c11>{He} was seen by the chaplain</c11>.",
    "<c11>Family meeting was held</c11> on {date}.",
)
QUOTED = (
    "{He} reports feeling \"much better\" and <c9>was told to \"take it easy\"</c9>.",
    "<c3>{His} “baseline” mental status</c3> was confirmed with {his} daughter.",
    "<c5>{He} refused the \"water pill\"</c5> on {date}.",
)
MULTILINE = (
    "<c9>Please call your doctor or return to the ER\nif you experience any of the following:</c9>",
    "<c5>Please take all of your medications as\nprescribed</c5>.",
)

# Every note gets one of these, so that each shows non-ASCII characters whatever its size.
NON_ASCII = (
    "{He} recently returned from Montréal and takes vitamin B12 1000 µg daily.",
    "Café-au-lait spots were noted; home vitamin D 25 µg daily was continued per {his} report.",
    "{He} was seen by Dr. Lefèvre’s team – heparin 5000 units SC (µ-dosing not required).",
)

FILLERS = (
    "{He} is a {age} year-old {man} with a history of {pmh}, {pmh} and {pmh} who presents with {complaint}.",
    "{He} denies fevers, chills, nausea, or vomiting.",
    "In the ED, initial vitals were T {temp}°F, HR {hr}, BP {sbp}/{dbp}, RR {rr}, O2 sat {sat}% on RA.",
    "No acute events overnight.",
    "Pt. was seen and examined by the team.",
    "{His} wife reports that {he} has been more fatigued over the past [**1-20**] weeks.",
    "ROS otherwise negative in detail.",
    "Of note, {he} recently returned from a trip to Montréal.",
    "{He} was comfortable at the time of discharge.",
    "Vitals:  T {temp}  HR {hr}  BP {sbp}/{dbp}  RR {rr}  O2 {sat}% on 2L NC.",
    "{He} ambulated with PT, e.g. to the bathroom and back, without difficulty.",
    "{He} lives at home with {his} wife; quit smoking approx. 20 yrs ago.",
    "Exam was otherwise unchanged vs. prior.",
    "{Mr} [**Known lastname {n}**] is well known to our service.",
    "{He}’s had no recent sick contacts.",
)

SOCIAL = (
    "{He} lives at home with {his} wife; quit smoking approx. 20 yrs ago.",
    "Denies EtOH or illicit drug use.",
    "Retired teacher, walks with a cane.",
    "Former smoker, 30 pack-year history.",
    "Lives alone in an apartment; {his} daughter checks in daily.",
)

PROBLEM_HEADER = "# <c3>{Problem}</c3>: "
DIAGNOSIS_LINE = ("<c3>{Problem}</c3>", "{problem}", "<c3>{Problem}</c3>, resolved")
MED_LINE = "{Drug} {dose} Tablet Sig: One (1) Tablet PO {freq_upper} ({freq_word})."
FREQ_WORDS = (("DAILY", "Daily"), ("BID", "2 times a day"), ("TID", "3 times a day"), ("QHS", "at bedtime"))
LAB_LINE = "{date} 04:{n}0PM BLOOD WBC-{lab}* RBC-3.{n}{n}* Hgb-{lab}* Hct-3{n}.{n}* MCV-9{n} Plt Ct-2{n}{n}"
FOLLOWUP_LINES = (
    "<c1>Provider: {dr} Phone:{phone} Date/Time:{date} 10:30</c1>",
    "<c1>{hospital} {service} clinic on {date}</c1>",
    "<c1>Follow up with {dr}</c1>",
)

# Per-section mixes of the annotated sentences (weights of the main span's category).
HPI_WEIGHTS = {3: 5.0, 7: 3.0, 1: 1.5, 5: 1.5, 2: 1.2, 6: 1.5}
COURSE_WEIGHTS = {3: 4.0, 5: 5.0, 7: 3.5, 6: 5.5, 1: 1.6, 9: 0.95, 2: 1.1, 4: 0.6, 8: 0.25}
INSTRUCTION_WEIGHTS = {9: 4.0, 5: 2.5, 1: 1.0, 2: 0.5, 8: 0.3, 4: 0.3}

# Post-processing: share of a note's spans that get each edge case (at least one per note).
EDGE_RATES = {
    "inside_word": 0.02,
    "edge_punct": 0.03,
    "whitespace": 0.015,
    "dup_other_category": 0.03,
    "dup_exact": 0.01,
    "tbd": 0.005,
    "reorder": 0.04,
}
SIMILAR_CATEGORY = {1: 3, 2: 7, 3: 7, 4: 5, 5: 3, 6: 3, 7: 3, 8: 1, 9: 5}

_SLOT = re.compile(r"\{(\w+)\}")
_MARK = re.compile(r"<(/?)c(\d+|T)>")

# ----------------------------------------------------------------------------------------------------
# Building one note.


def fill_slots(template: str, rng: random.Random, context: Mapping[str, str]) -> str:
    """Replace ``{slot}`` by a random value (``{Slot}``: capitalised); ``context`` wins (pronouns)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        key = name.lower()
        if key in context:
            text = context[key]
        elif key in SLOTS:
            choice = rng.choice(SLOTS[key])
            text = choice(rng) if callable(choice) else choice
        else:
            raise KeyError(f"unknown slot {{{name}}} in template {template!r}")
        return text[:1].upper() + text[1:] if name[:1].isupper() else text

    return _SLOT.sub(value, template)


def parse_marked(marked: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Plain text and (start, end, label) spans of a ``<cN>``-marked string, in order of their opening.

    A close matches the latest open of the SAME label, so spans of different labels may cross.
    """
    pieces: list[str] = []
    length = 0
    last = 0
    open_at: dict[str, list[tuple[int, int]]] = {}  # label -> stack of (open order, start)
    spans: list[tuple[int, int, int, str]] = []  # (open order, start, end, label)
    order = 0
    for match in _MARK.finditer(marked):
        chunk = marked[last:match.start()]
        pieces.append(chunk)
        length += len(chunk)
        last = match.end()
        closing, label = match.group(1) == "/", match.group(2)
        if not closing:
            open_at.setdefault(label, []).append((order, length))
            order += 1
            continue
        if not open_at.get(label):
            raise ValueError(f"close of c{label} without an open in {marked[:80]!r}")
        opened, start = open_at[label].pop()
        spans.append((opened, start, length, label))
    pieces.append(marked[last:])
    if any(open_at.values()):
        raise ValueError(f"unclosed span in {marked[:80]!r}")
    spans.sort()
    return "".join(pieces), [(start, end, label) for _, start, end, label in spans]


class _NoteBuilder:
    """Accumulates a marked note and tracks its plain length and span count (to steer span density)."""

    def __init__(self, rng: random.Random, context: Mapping[str, str], target_chars: int, target_spans: float):
        self.rng = rng
        self.context = context
        self.target_chars = target_chars
        self.target_spans = target_spans
        self.parts: list[str] = []
        self.chars = 0
        self.spans = 0

    def add(self, template: str) -> None:
        filled = fill_slots(template, self.rng, self.context)
        self.parts.append(filled)
        self.chars += len(_MARK.sub("", filled))
        self.spans += filled.count("<c")

    def behind_on_spans(self) -> bool:
        return self.spans < self.target_spans * max(self.chars, 1) / self.target_chars

    def separator(self) -> None:
        """Sentence gap as in MIMIC: mostly one space, sometimes two, a hard line break or a new paragraph."""
        r = self.rng.random()
        self.add(" " if r < 0.72 else "  " if r < 0.84 else "\n" if r < 0.92 else "\n\n")

    def marked(self) -> str:
        return "".join(self.parts)


def _weighted(rng: random.Random, weights: Mapping[int, float]) -> int:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _narrative(b: _NoteBuilder, budget: int, weights: Mapping[int, float], forced: list[str] | None = None,
               templates: Mapping[int, Sequence[str]] = DECISIONS, fillers: Sequence[str] = FILLERS,
               problem_headers: bool = False) -> None:
    """Sentences until ``budget`` characters: decisions while behind the span target, fillers otherwise."""
    start = b.chars
    forced = forced if forced is not None else []
    while b.chars - start < budget or forced:
        if problem_headers and b.rng.random() < 0.08:
            b.add("\n\n" + PROBLEM_HEADER)
        if forced and (b.rng.random() < 0.25 or b.chars - start >= budget):
            b.add(forced.pop())
        elif weights and b.behind_on_spans():
            b.add(b.rng.choice(templates[_weighted(b.rng, weights)]))
        else:
            b.add(b.rng.choice(fillers))
        b.separator()
    b.add("\n\n")


COMPACT_BELOW = 4000  # notes shorter than this skip the optional sections, so tiny test notes stay tiny
FIXED_CHARS = {True: 700, False: 1500}  # about what the skeleton and forced sentences take (compact, full)
SECTION_SHARES = {  # of the characters left for the variable parts
    "hpi": 0.20, "pmh": 0.05, "social": 0.02, "results": 0.07, "course": 0.42,
    "admission_meds": 0.04, "discharge_meds": 0.08, "diagnosis": 0.03, "instructions": 0.07, "followup": 0.02,
}


def _header(b: _NoteBuilder, compact: bool) -> None:
    rng = b.rng
    if not compact:
        b.add("Name:  [**Known lastname {n}**], [**Known firstname {n}{n}**]       "
              "Unit No:  [**Numeric Identifier {n}{n}{n}**]\n\n")
    b.add("Admission Date:  {date}              Discharge Date:   {date}\n\n")
    b.add("Date of Birth:  {date}             Sex:   " + ("M" if b.context["he"] == "he" else "F") + "\n\n")
    b.add("Service: " + rng.choice(("MEDICINE", "CARDIOTHORACIC", "SURGERY", "NEUROLOGY")) + "\n\n")
    if not compact:
        b.add("Allergies:\n" + rng.choice(("Patient recorded as having No Known Allergies to Drugs",
                                           "Penicillins / Sulfa (Sulfonamide Antibiotics)", "Codeine")) + "\n\n")
        b.add("Attending:[**First Name3 (LF) {n}{n}{n}**]\nChief Complaint:\n{complaint}\n\n")
    procedure = "<c6>{procedure}</c6>" if rng.random() < 0.6 else "None"
    b.add("Major Surgical or Invasive Procedure:\n" + procedure + "\n\n")


def _list_section(b: _NoteBuilder, title: str, budget: int, line: Callable[[int], str], min_items: int = 1) -> None:
    b.add(title + "\n")
    start, i = b.chars, 0
    while b.chars - start < budget or i < min_items:
        i += 1
        b.add(line(i) + "\n")
    b.add("\n")


def _med_line(b: _NoteBuilder, i: int, annotate: float) -> str:
    upper, word = b.rng.choice(FREQ_WORDS)
    text = f"{i}. " + MED_LINE.replace("{freq_upper}", upper).replace("{freq_word}", word)
    if b.rng.random() < annotate:
        text = f"{i}. <c5>" + text[len(f"{i}. "):] + "</c5>"
    return text


def _body(b: _NoteBuilder, forced: list[str], compact: bool) -> None:
    """All sections after the header, each given a share of the characters the skeleton leaves."""
    rng = b.rng
    left = max(b.target_chars - FIXED_CHARS[compact], 0.3 * b.target_chars)
    share = {name: int(fraction * left) for name, fraction in SECTION_SHARES.items()}
    b.add("History of Present Illness:\n")
    _narrative(b, share["hpi"], HPI_WEIGHTS)
    if not compact:
        history = rng.sample(SLOTS["pmh"], k=min(len(SLOTS["pmh"]), max(2, share["pmh"] // 22)))
        b.add("Past Medical History:\n" + "".join(
            f"- {item}" + (" (dx {date})" if rng.random() < 0.3 else "") + "\n" for item in history) + "\n")
        b.add("Social History:\n")
        _narrative(b, share["social"], {}, fillers=SOCIAL)
        b.add("Family History:\nNon-contributory.\n\n")
        b.add("Physical Exam:\n")
        b.add("VS:  T {temp}°F  HR {hr}  BP {sbp}/{dbp}  RR {rr}  O2 sat {sat}% RA\n")
        b.add("Gen: NAD, A&Ox3\nHEENT: PERRL, EOMI, MMM\n")
        b.add("CV: RRR, no m/r/g\nLungs: CTAB\nAbd: soft, NT/ND, +BS\nExt: no c/c/e\n\n")
    _list_section(b, "Pertinent Results:", share["results"], lambda i: LAB_LINE if rng.random() < 0.8
                  else "IMPRESSION: " + rng.choice(("<c7>{finding}</c7>.", "{Test}: <c7>{finding}</c7>.")))
    b.add("Brief Hospital Course:\n")
    _narrative(b, share["course"], COURSE_WEIGHTS, forced=forced, problem_headers=True)
    if not compact:
        _list_section(b, "Medications on Admission:", share["admission_meds"], lambda i: _med_line(b, i, annotate=0.1))
    _list_section(b, "Discharge Medications:", share["discharge_meds"], lambda i: _med_line(b, i, annotate=0.75))
    b.add("Discharge Disposition:\n" + rng.choice(("Home", "Home With Service", "Extended Care")) + "\n\n")
    if rng.random() < 0.3:
        b.add("Facility:\n<c1>{hospital}</c1>\n\n")
    _list_section(b, "Discharge Diagnosis:", share["diagnosis"], lambda i: rng.choice(DIAGNOSIS_LINE))
    if not compact:
        b.add("Discharge Condition:\nMental Status: Clear and coherent.\n"
              "Level of Consciousness: Alert and interactive.\n\n")
    b.add("Discharge Instructions:\n")
    b.add(rng.choice(MULTILINE) + "\n- fever > 101.5°F\n- chest pain\n- weight gain > 3 lbs in 1–2 days\n\n")
    _narrative(b, share["instructions"], INSTRUCTION_WEIGHTS, templates=INSTRUCTIONS, fillers=FILLERS[8:9])
    _list_section(b, "Followup Instructions:", share["followup"], lambda i: rng.choice(FOLLOWUP_LINES))
    if not compact:
        b.add("\n\n                             {dr}\n\nCompleted by:{date}")


def _target_size(rng: random.Random, mean_chars: int) -> int:
    """Note length: log-normal around ``mean_chars`` (median), clipped like the real data (max ~2.7x)."""
    return int(min(max(mean_chars * math.exp(rng.gauss(0.0, 0.35)), 0.3 * mean_chars), 2.7 * mean_chars))


def _marked_note(rng: random.Random, sex: str, mean_chars: int, mean_spans: int) -> str:
    target_chars = _target_size(rng, mean_chars)
    target_spans = 1.08 * mean_spans * target_chars / mean_chars  # narrative leads; lists and headers lag
    compact = target_chars < COMPACT_BELOW
    b = _NoteBuilder(rng, PRONOUNS[sex], target_chars, target_spans)
    forced = [rng.choice(CROSSING), rng.choice(NESTED), rng.choice(QUOTED), rng.choice(NON_ASCII),
              OUT_OF_SCOPE[rng.randrange(2)], OUT_OF_SCOPE[2 + rng.randrange(2)]]
    if not compact:
        forced.append(rng.choice(CROSSING))
    rng.shuffle(forced)
    _header(b, compact)
    _body(b, forced, compact)
    return b.marked()


# ----------------------------------------------------------------------------------------------------
# Edge cases applied to the spans of a finished note.

_Span = tuple[int, int, str]  # start, end, label ("3", "10", "T")


def _pick(rng: random.Random, rate: float, candidates: list[int]) -> list[int]:
    count = min(len(candidates), max(1, round(rate * len(candidates))))
    return rng.sample(candidates, count) if candidates else []


def _word_at(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isalnum()


def _apply_edge_cases(rng: random.Random, text: str, spans: list[_Span]) -> list[_Span]:
    """Move some span edges inside words / onto punctuation / onto whitespace; add duplicates and TBD copies."""
    spans = list(spans)
    n = len(spans)
    # Starts moved inside a word ("ontinue aspirin") or ends cut inside one ("continue aspir").
    inside = [i for i, (s, e, _) in enumerate(spans) if e - s > 8 and _word_at(text, s) and _word_at(text, s + 3)
              or e - s > 8 and _word_at(text, e - 1) and _word_at(text, e - 4)]
    for i in _pick(rng, EDGE_RATES["inside_word"], inside):
        s, e, label = spans[i]
        if _word_at(text, s) and _word_at(text, s + 3) and (rng.random() < 0.5 or not _word_at(text, e - 4)):
            spans[i] = (s + rng.randint(1, 2), e, label)
        else:
            spans[i] = (s, e - rng.randint(1, 2), label)
    # Edge punctuation: a following ".,;)" or a preceding "(" / quote taken into the span.
    punct = [i for i, (s, e, _) in enumerate(spans)
             if e < len(text) and text[e] in ".,;:)" or s > 0 and text[s - 1] in "(\"“"]
    for i in _pick(rng, EDGE_RATES["edge_punct"], punct):
        s, e, label = spans[i]
        spans[i] = (s, e + 1, label) if e < len(text) and text[e] in ".,;:)" else (s - 1, e, label)
    # Leading / trailing whitespace.
    space = [i for i, (s, e, _) in enumerate(spans)
             if s > 0 and text[s - 1] == " " or e < len(text) and text[e] in " \n"]
    for i in _pick(rng, EDGE_RATES["whitespace"], space):
        s, e, label = spans[i]
        spans[i] = (s - 1, e, label) if s > 0 and text[s - 1] == " " else (s, e + 1, label)
    # Copies: same offsets in a second category, exact duplicates, TBD; each right after its original.
    copies: dict[int, list[_Span]] = {}
    in_scope = [i for i, (_, _, label) in enumerate(spans) if label.isdigit() and int(label) <= 9]
    for i in _pick(rng, EDGE_RATES["dup_other_category"], in_scope):
        s, e, label = spans[i]
        copies.setdefault(i, []).append((s, e, str(SIMILAR_CATEGORY[int(label)])))
    for i in _pick(rng, EDGE_RATES["dup_exact"], in_scope):
        copies.setdefault(i, []).append(spans[i])
    for i in _pick(rng, EDGE_RATES["tbd"], in_scope):
        s, e, _ = spans[i]
        copies.setdefault(i, []).append((s, e, "T"))
    out: list[_Span] = []
    for i, span in enumerate(spans):
        out.append(span)
        out.extend(copies.get(i, []))
    # Annotators do not always work in reading order: move a few annotations later in the list.
    for i in sorted(_pick(rng, EDGE_RATES["reorder"], list(range(n))), reverse=True):
        if i < len(out) - 1:
            span = out.pop(i)
            out.insert(rng.randint(i + 1, len(out)), span)
    return out


def _to_annotation(text: str, k: int, span: _Span) -> Annotation:
    start, end, label = span
    if label == "T":
        raw, category = TBD, 0
    else:
        category = int(label)
        raw = gold_name(category)
        category = category if category <= 9 else 0
    return Annotation(start, end, category, raw, f"T{k}", text[start:end])


def build_note(note_id: str, rng: random.Random, *, sex: str = "M", mean_chars: int = 9000, mean_spans: int = 160,
               crlf: bool = False) -> Note:
    """One synthetic note: template text, optional CRLF line endings, then edge cases on its spans."""
    marked = _marked_note(rng, sex, mean_chars, mean_spans)
    if crlf:
        marked = marked.replace("\n", "\r\n")
    text, spans = parse_marked(marked)
    spans = _apply_edge_cases(rng, text, spans)
    return Note(note_id, text, [_to_annotation(text, k, span) for k, span in enumerate(spans, start=1)])


# ----------------------------------------------------------------------------------------------------
# Ids and notes.


def _stream(seed: int, *parts: object) -> random.Random:
    """An independent generator per (seed, purpose, index): changing one size never reshuffles the rest."""
    return random.Random(":".join(["meddec-synthetic", str(seed), *map(str, parts)]))


class _IdPool:
    """Unique SUBJECT_ID, HADM_ID and ROW_ID values in MIMIC-III's ranges."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[int] = set()

    def _draw(self, lo: int, hi: int) -> int:
        while True:
            value = self.rng.randint(lo, hi)
            if value not in self.used:
                self.used.add(value)
                return value

    def triple(self) -> tuple[int, int, int]:
        return self._draw(100, 99_999), self._draw(100_000, 199_999), self._draw(200_000, 2_099_999)

    def row_id(self) -> int:
        return self._draw(200_000, 2_099_999)


@dataclass
class _NoteRecord:
    note: Note
    subject_id: int
    hadm_id: int
    row_id: int
    sex: str


def _note_records(n: int, seed: int, stream: str, ids: _IdPool, *, mean_chars: int, mean_spans: int,
                  crlf_rate: float, annotator_rate: float) -> list[_NoteRecord]:
    records = []
    plan = _stream(seed, stream, "plan")
    crlf = [plan.random() < crlf_rate for _ in range(n)]
    suffix = [plan.random() < annotator_rate for _ in range(n)]
    # Tiny corpora still show each id and line-ending edge case once.
    if n >= 2 and crlf_rate > 0 and not any(crlf):
        crlf[1] = True
    if n >= 3 and annotator_rate > 0 and not any(suffix):
        suffix[2] = True
    for i in range(n):
        subject, hadm, row = ids.triple()
        note_id = f"{subject}_{hadm}_{row}" + (f"-{plan.choice(ANNOTATORS)}" if suffix[i] else "")
        sex = plan.choice(GENDERS)
        note = build_note(note_id, _stream(seed, stream, i), sex=sex, mean_chars=mean_chars, mean_spans=mean_spans,
                          crlf=crlf[i])
        records.append(_NoteRecord(note, subject, hadm, row, sex))
    return records


def generate_notes(n: int, seed: int = 0, *, mean_chars: int = 9000, mean_spans: int = 160, crlf_rate: float = 0.1,
                   annotator_rate: float = 0.05) -> list[Note]:
    """``n`` synthetic annotated notes in memory (ids ``SUBJECT_HADM_ROW[-annotator]``), deterministic in ``seed``.

    ``Note.annotations`` hold every gold span in file order, out-of-scope ones (TBD, 10, 11) with category 0.
    """
    _check_sizes(n=n, mean_chars=mean_chars, mean_spans=mean_spans)
    ids = _IdPool(_stream(seed, "ids"))
    return [r.note for r in _note_records(n, seed, "notes", ids, mean_chars=mean_chars, mean_spans=mean_spans,
                                          crlf_rate=crlf_rate, annotator_rate=annotator_rate)]


def _check_sizes(**sizes: int) -> None:
    """Sizes are non-negative integers (the means at least 1); a bad one is an InputError naming its flag."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError.flag(f"--{name}", f"expected a non-negative integer, got {value!r}")
    for name in ("mean_chars", "mean_spans"):
        if name in sizes and sizes[name] < 1:
            raise InputError.flag(f"--{name}", f"expected at least 1, got {sizes[name]!r}")


# ----------------------------------------------------------------------------------------------------
# The corpus on disk.


@dataclass
class SyntheticCorpusInfo:
    """What ``generate_corpus`` wrote: the root folder, note ids per split, and counts."""

    root: Path
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]
    unlabeled_row_ids: list[int]  # ROW_IDs of the extra "Report" discharge summaries in NOTEEVENTS.csv
    n_noteevents_rows: int
    n_annotations: int
    n_chars: int
    category_counts: dict[str, int] = field(default_factory=dict)  # gold string -> count over all split notes

    @property
    def paths(self) -> MedDecPaths:
        return MedDecPaths(self.root)

    def ids(self, split: str) -> list[str]:
        """Note ids of ``train``, ``val`` or ``test``."""
        return {"train": self.train_ids, "val": self.val_ids, "test": self.test_ids}[split]

    @property
    def all_ids(self) -> list[str]:
        return [*self.train_ids, *self.val_ids, *self.test_ids]


def _demographics(rng: random.Random, records: Sequence[_NoteRecord]) -> list[tuple[str, str]]:
    """(ETHNICITY, LANGUAGE) per note; a split of >= 8 notes has every ethnicity and both languages."""
    n = len(records)
    ethnicity = rng.choices(ETHNICITIES, weights=ETHNICITY_WEIGHTS, k=n)
    language = [LANGUAGES[rng.random() < 0.15] for _ in range(n)]
    if n >= len(ETHNICITIES):
        slots = rng.sample(range(n), len(ETHNICITIES))
        for slot, value in zip(slots, ETHNICITIES):
            ethnicity[slot] = value
    if n >= 2:
        for slot, value in zip(rng.sample(range(n), 2), LANGUAGES):
            language[slot] = value
    return list(zip(ethnicity, language))


def _balance_sex(rng: random.Random, records: list[_NoteRecord]) -> None:
    """Both sexes in any split of >= 2 notes (the sex subgroups of the official score must be non-empty)."""
    if len(records) >= 2 and len({r.sex for r in records}) == 1:
        records[rng.randrange(len(records))].sex = "F" if records[0].sex == "M" else "M"


_CHART_DATE = "{year}-{month:02d}-{day:02d}"


def _chart_fields(rng: random.Random) -> tuple[str, str, str]:
    date = _CHART_DATE.format(year=rng.randint(2100, 2190), month=rng.randint(1, 12), day=rng.randint(1, 28))
    return date, "", ""


# Non-discharge rows as MIMIC-III writes them: note the "Physician " category with its trailing space, and
# ECG rows whose DESCRIPTION is "Report" too (filter on CATEGORY, not on DESCRIPTION alone).
OTHER_NOTE_KINDS = (
    ("Radiology", "CHEST (PORTABLE AP)"),
    ("Nursing", "Nursing Progress Note"),
    ("ECG", "Report"),
    ("Physician ", "Physician Resident Progress Note"),
)


def _other_note_text(rng: random.Random, category: str) -> str:
    if category == "Radiology":
        return (f"{_deid_date(rng)} 8:{rng.randint(10, 59)} AM\n"
                " CHEST (PORTABLE AP)\n\n FINAL REPORT\n IMPRESSION:  No acute cardiopulmonary process.\n")
    if category.startswith("Physician"):
        return ("Chief Complaint: dyspnea\n24 Hour Events:\nNo acute events.\n"
                "Assessment and Plan: continue current management.\n")
    if category == "Nursing":
        return ("Neuro: A&Ox3, MAE.\nCV: NSR 70s-80s, SBP 110s–120s.\nResp: LS clear, O2 sat 97% on 2L.\n"
                "Plan: continue to monitor.\n")
    return "Sinus rhythm. Normal ECG. Since previous tracing, no significant change.\n"


def _addendum_text(rng: random.Random) -> str:
    return (f"Name:  [**Known lastname {rng.randint(10, 999)}**]\n\n"
            "Addendum:\nPatient's discharge medications were reconciled.\n")


def _noteevents_rows(seed: int, labeled: Sequence[_NoteRecord], unlabeled: Sequence[_NoteRecord], ids: _IdPool,
                     n_addenda: int, n_other: int) -> list[list[object]]:
    """Rows for NOTEEVENTS.csv: split notes and extras ("Report"), addenda, and non-discharge notes, shuffled."""
    rng = _stream(seed, "noteevents")
    rows: list[list[object]] = []
    for r in [*labeled, *unlabeled]:
        date, time, store = _chart_fields(rng)
        rows.append([r.row_id, r.subject_id, r.hadm_id, date, time, store, DISCHARGE_CATEGORY, "Report", "", "",
                     r.note.text])
    pool = [*labeled, *unlabeled]
    for _ in range(n_addenda):
        r = rng.choice(pool)
        date, time, store = _chart_fields(rng)
        rows.append([ids.row_id(), r.subject_id, r.hadm_id, date, time, store, DISCHARGE_CATEGORY, "Addendum", "", "",
                     _addendum_text(rng)])
    for k in range(n_other):
        category, description = OTHER_NOTE_KINDS[k % len(OTHER_NOTE_KINDS)]
        r = rng.choice(pool)
        hadm: object = "" if k == 1 or rng.random() < 0.1 else r.hadm_id  # outpatient notes have no HADM_ID
        date, _, _ = _chart_fields(rng)
        time = f"{date} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        rows.append([ids.row_id(), r.subject_id, hadm, date, time, time, category, description,
                     str(rng.randint(14000, 21000)), "", _other_note_text(rng, category)])
    rng.shuffle(rows)
    return rows


def _gold_record(note: Note, trailing_underscore: bool) -> dict[str, object]:
    return {
        "discharge_summary_id": note.note_id + ("_" if trailing_underscore else ""),
        "annotations": [
            {"annotation_id": a.annotation_id, "start_offset": a.start, "end_offset": a.end,
             "category": a.category_raw, "decision": a.decision}
            for a in note.annotations
        ],
    }


def _write_corpus_files(root: Path, seed: int, splits: Mapping[str, Sequence[_NoteRecord]],
                        unlabeled: Sequence[_NoteRecord], ids: _IdPool, settings: Mapping[str, object]) -> int:
    """Write every file of the layout under ``root`` (a fresh folder); returns the NOTEEVENTS row count."""
    rng = _stream(seed, "files")
    (root / "data").mkdir(parents=True)
    (root / "raw_text").mkdir()
    (root / "splits").mkdir()
    labeled = [r for records in splits.values() for r in records]
    underscore = [rng.random() < 0.1 for _ in labeled]
    if len(labeled) >= 2 and not any(underscore):
        underscore[0] = True
    for r, trailing in zip(labeled, underscore):
        with open(root / "raw_text" / f"{r.note.note_id}.txt", "w", encoding="utf-8", newline="") as handle:
            handle.write(r.note.text)
        with open(root / "data" / f"{r.note.note_id}.json", "w", encoding="utf-8") as handle:
            json.dump(_gold_record(r.note, trailing), handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    for name, records in splits.items():
        order = list(records)
        rng.shuffle(order)  # split files are not sorted
        (root / "splits" / f"{name}.txt").write_text("".join(f"{r.note.note_id}\n" for r in order), encoding="utf-8")
    with open(root / "stats.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("SUBJECT_ID", "HADM_ID", "ROW_ID", "GENDER", "ETHNICITY", "LANGUAGE"))
        for records in splits.values():
            for r, (ethnicity, language) in zip(records, _demographics(rng, records)):
                writer.writerow((r.subject_id, r.hadm_id, r.row_id, r.sex, ethnicity, language))
    n_addenda = max(1, len(unlabeled) // 10) if unlabeled or labeled else 0
    n_other = max(3, len(unlabeled) // 3) if unlabeled or labeled else 0
    rows = _noteevents_rows(seed, labeled, unlabeled, ids, n_addenda, n_other)
    with open(root / "NOTEEVENTS.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(NOTEEVENTS_HEADER)
        writer.writerows(rows)
    (root / MARKER_FILE).write_text(json.dumps(dict(settings), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return len(rows)


#: The files a synthetic corpus consists of (relative glob patterns); anything else in its folder is the user's.
CORPUS_PATTERNS = ("data/*.json", "raw_text/*.txt", "splits/*.txt", "stats.csv", "NOTEEVENTS.csv")


def _foreign_files(out_dir: Path) -> list[Path]:
    """Files (or links, pipes...) in an earlier corpus folder that the generator did not write."""
    ours = {p for pattern in (*CORPUS_PATTERNS, MARKER_FILE) for p in out_dir.glob(pattern)
            if p.is_file() and not p.is_symlink()}
    folders = {out_dir / "data", out_dir / "raw_text", out_dir / "splits"}
    return sorted(p for p in out_dir.rglob("*") if p not in ours and not (p in folders and p.is_dir()
                                                                         and not p.is_symlink()))


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an earlier synthetic corpus there is replaced, anything else kept."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(out_dir, "", "exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
            raise InputError(out_dir, "", f"not empty and not a synthetic corpus (no {MARKER_FILE}); "
                                          "choose another --out_dir")
        if any(out_dir.iterdir()):
            foreign = _foreign_files(out_dir)
            if foreign:
                raise InputError(foreign[0], "", f"not part of the synthetic corpus in {out_dir} ({len(foreign)} such "
                                                 "file(s)); replacing the corpus would delete them: move them or "
                                                 "choose another --out_dir")
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "corpus")
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
            return
    os.replace(tmp, out_dir)  # rename() may replace an empty directory


def generate_corpus(out_dir: str | os.PathLike[str], *, seed: int = 0, n_train: int = 350, n_val: int = 53,
                    n_test: int = 53, n_unlabeled: int = 300, mean_chars: int = 9000,
                    mean_spans: int = 160) -> SyntheticCorpusInfo:
    """Write a synthetic MedDec corpus (data/, raw_text/, stats.csv, splits/, NOTEEVENTS.csv) to ``out_dir``.

    Deterministic in ``seed`` and the sizes: the same call writes byte-identical files. The corpus is built
    in a temporary sibling folder and moved into place, so ``out_dir`` never holds a half-written corpus.
    """
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, n_unlabeled=n_unlabeled, mean_chars=mean_chars,
                 mean_spans=mean_spans)
    out_dir = Path(out_dir).resolve()
    ids = _IdPool(_stream(seed, "ids"))
    options = dict(mean_chars=mean_chars, mean_spans=mean_spans, crlf_rate=0.1, annotator_rate=0.05)
    splits: dict[str, list[_NoteRecord]] = {}
    for name, n in zip(SPLITS, (n_train, n_val, n_test)):
        splits[name] = _note_records(n, seed, name, ids, **options)
        _balance_sex(_stream(seed, name, "sex"), splits[name])
    unlabeled = _note_records(n_unlabeled, seed, "unlabeled", ids, **{**options, "annotator_rate": 0.0})
    settings = dict(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, n_unlabeled=n_unlabeled,
                    mean_chars=mean_chars, mean_spans=mean_spans, generator="dataset.synthetic")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the corpus is ordinary data
        n_rows = _write_corpus_files(tmp, seed, splits, unlabeled, ids, settings)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    labeled = [r.note for records in splits.values() for r in records]
    return SyntheticCorpusInfo(
        root=out_dir,
        train_ids=[r.note.note_id for r in splits["train"]],
        val_ids=[r.note.note_id for r in splits["val"]],
        test_ids=[r.note.note_id for r in splits["test"]],
        unlabeled_row_ids=[r.row_id for r in unlabeled],
        n_noteevents_rows=n_rows,
        n_annotations=sum(len(n.annotations) for n in labeled),
        n_chars=sum(len(n.text) for n in labeled),
        category_counts=dict(Counter(a.category_raw for n in labeled for a in n.annotations)),
    )


# ----------------------------------------------------------------------------------------------------
# Summaries (the CLI prints these).


def category_histogram(notes: Iterable[Note]) -> Counter[str]:
    """Count of annotations per gold category string (in-scope and out-of-scope)."""
    return Counter(a.category_raw for note in notes for a in note.annotations)


def summarize_notes(notes: Sequence[Note]) -> dict[str, float]:
    """Median/max characters and spans per note: the numbers the real validation set is described by."""
    chars = [len(n.text) for n in notes] or [0]
    spans = [len(n.annotations) for n in notes] or [0]
    return {
        "notes": len(notes),
        "chars_median": statistics.median(chars),
        "chars_max": max(chars),
        "spans_median": statistics.median(spans),
        "spans_mean": statistics.fmean(spans),
        "crlf_notes": sum("\r\n" in n.text for n in notes),
        "annotator_suffix_notes": sum(1 for n in notes if (p := parse_note_id(n.note_id)) is not None and p.annotator),
    }
