"""What a labeling job costs, by configuration: the reference job of issue 14.

    PYTHONPATH=. python benchmarks/cost.py [ROWS]

The job: generated support tickets (~60 tokens each, 30% of rows duplicates of others),
a fixed ~300-token instruction written inside the template before ``{text}``, five
labels, gpt-4o-mini list prices. Every configuration runs against the loopback server
counting tokens with tiktoken (o200k_base) and simulating OpenAI's prompt cache; the
dollars are the server's own token counts at list prices (Batch API rates for batch
runs, the cached-input rate for cached tokens). The baseline is the serial loop: one
request per row through the openai SDK, the template with the labels listed, a one-word
answer. "estimate" is ``df.llm.estimate(...)`` with the same arguments, before the run;
its error is against the billed dollars. Nothing here is timed.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import warnings

import openai
import pandas as pd

import pandas_llm
from pandas_llm._cost.tokens import encoding_for
from pandas_llm._pricing import cost, price_for
from pandas_llm.testing import LLMServer

MODEL = "gpt-4o-mini"
LABELS = ["billing", "bug", "feature request", "account access", "other"]

INSTRUCTION = """You are the triage assistant of the support team of Acme Cloud, a company selling \
online storage, backup and file sharing to small businesses. Each ticket below was written by a \
customer through the web form or by email, and your job is to route it to the right queue.

Read the whole ticket before deciding. Customers often start with pleasantries or with their \
account history; the routing depends on what they need now, not on how they introduce themselves.

Queues:
- billing: invoices, charges, refunds, payment methods, plan prices, taxes, receipts, a card \
declined, a double charge, a request to change the billing address or the company name on invoices.
- bug: something in the product does not work as documented: errors, crashes, sync that stops, files \
that do not upload, a page that never loads, wrong numbers shown in the dashboard, broken links.
- feature request: the customer asks for something the product does not do yet, or suggests a change \
to how something works, including integrations with other tools and new export formats.
- account access: login problems, password resets, two-factor authentication, locked accounts, \
invitations that do not arrive, adding or removing users, changing the account owner.
- other: anything else, including praise, questions about the company, partnership offers and spam.

When a ticket mentions several things, choose the queue of the main request: the one the customer \
needs answered to be satisfied. A ticket that reports an error while paying is billing if the customer \
was charged, and bug otherwise. Do not guess from a single keyword; consider the whole message. Be \
consistent: two tickets asking for the same thing go to the same queue whatever their tone or length.

Ticket:
"""

SUBJECTS = [
    "my invoice",
    "the desktop app",
    "file sync",
    "our team plan",
    "two-factor login",
    "the API",
    "shared folders",
    "the mobile app",
    "exports to CSV",
    "my password",
    "the dashboard",
    "a refund",
]
PROBLEMS = [
    "shows the wrong total since last week",
    "stopped working after the update yesterday",
    "charges us twice for the same month",
    "would be much better with a dark mode",
    "keeps asking for a code that never arrives",
    "fails with error 500 when the file is large",
    "needs an integration with our accounting software",
    "locked me out after three attempts",
    "is slower than it used to be on every computer in the office",
    "lists users who left months ago",
]
CONTEXT = ["We have been customers for three years and are mostly happy.", "This is urgent for our audit.",
           "Our office manager noticed it first.", "I already tried restarting and reinstalling.",
           "Please get back to me by email rather than phone.", "Several colleagues see the same thing.",
           "I could not find anything about it in the help center.", "Thanks in advance for your help."]  # fmt: skip


def tickets(n: int, *, duplicates: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """``n`` tickets of ~60 tokens; a ``duplicates`` share of the rows repeat earlier ones."""
    rng = random.Random(seed)
    unique = []
    for i in range(round(n * (1 - duplicates))):
        a, b, c = rng.sample(CONTEXT, 3)
        unique.append(f"Hello, ticket {i}: {rng.choice(SUBJECTS)} {rng.choice(PROBLEMS)}. {a} {b} {c} "
                      f"Account #{rng.randrange(10_000, 99_999)}, {rng.choice(['Paris', 'Leeds', 'Austin', 'Osaka'])}.")  # fmt: skip
    rows = unique + [rng.choice(unique) for _ in range(n - len(unique))]
    rng.shuffle(rows)
    return pd.DataFrame({"text": rows})


def billed(srv: LLMServer, batch: bool) -> float:
    """USD for what the server billed since its counters were reset."""
    return cost(price_for(MODEL), prompt_tokens=srv.prompt_tokens, completion_tokens=srv.completion_tokens,
                cached_tokens=srv.cached_tokens, batch=batch)  # fmt: skip


def serial_loop(df: pd.DataFrame, count) -> float:
    """The naive loop: one request per row, the labels in the template, a one-word answer."""
    template = INSTRUCTION.replace("Ticket:\n", f"Answer with one queue name only: {', '.join(LABELS)}.\n\nTicket:\n")
    with LLMServer(tokens=count, prompt_cache=True, answer=lambda messages, model: "feature request") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        for text in df["text"]:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": template + text}])
        client.close()
        return billed(srv, batch=False)


CONFIGS = {
    "classify (dedup only)": {},
    'classify(mode="batch")': {"mode": "batch"},
    "classify(rows_per_request=20), instruction in the template": {"rows_per_request": 20},
    "classify(rows_per_request=20), instruction in system=": {"rows_per_request": 20, "system": True},
    'classify(mode="batch", rows_per_request=20)': {"mode": "batch", "rows_per_request": 20},
}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    df = tickets(n)
    enc = encoding_for(MODEL)
    count = lambda text: len(enc.encode(text, disallowed_special=()))  # noqa: E731
    print(f"{n:,} tickets ({df['text'].nunique():,} distinct, ~{sum(map(count, df['text'])) / n:.0f} tokens each), "
          f"instruction ~{count(INSTRUCTION)} tokens in the template, {len(LABELS)} labels, {MODEL} list prices\n")  # fmt: skip
    base = serial_loop(df, count)
    per_k = 1000 / n
    header = (
        f"{'configuration':62} {'$ / 1,000 rows':>14} {'x cheaper':>9} {'labelled':>9} {'estimate':>9} {'error':>7}"
    )
    print(header)
    print(f"{'serial loop (one request per row)':62} {base * per_k:>14.4f} {1.0:>9.2f} {n:>9,}")
    with tempfile.TemporaryDirectory() as tmp, LLMServer(tokens=count, prompt_cache=True) as srv:
        for i, (name, kw) in enumerate(CONFIGS.items()):
            kw = dict(kw)
            template = "{text}" if kw.pop("system", False) else INSTRUCTION + "{text}"
            system = INSTRUCTION.removesuffix("Ticket:\n") if template == "{text}" else None
            opts = dict(base_url=srv.base_url, api_key="x", progress=False, poll_interval=0.01, model=MODEL,
                        cache=os.path.join(tmp, f"{i}.sqlite"), system=system, **kw)  # fmt: skip
            try:
                est = df.llm.estimate(template, labels=LABELS, **opts)
            except TypeError:  # estimate() without labels= (before issue 14)
                est = None
            except pandas_llm.ConfigError:
                est = None
            srv.reset_counters()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = df.llm.classify(template, labels=LABELS, **opts)
            except pandas_llm.ConfigError as exc:
                print(f"{name:62} {'refused (ConfigError)':>14}   {str(exc)[:40]}")
                continue
            dollars = billed(srv, batch=kw.get("mode") == "batch")
            expected = None if est is None else _expected(est, kw.get("mode") == "batch")
            error = "" if expected is None else f"{expected / dollars - 1:+.0%}"
            shown = "" if expected is None else f"{expected * per_k:.4f}"
            print(f"{name:62} {dollars * per_k:>14.4f} {base / dollars:>9.2f} {int(out.notna().sum()):>9,} "
                  f"{shown:>9} {error:>7}")  # fmt: skip


def _expected(est, batch: bool) -> float | None:
    value = est.batch_cost if batch else est.cost
    if value is None:
        return None
    return value.expected if value.expected is not None else value.high


if __name__ == "__main__":
    main()
