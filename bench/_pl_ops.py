"""The polars sides of ``bench/operators.py``: each built-in per-batch operator's transform written directly in
polars expressions over a frame of the same rows (``pl.from_arrow``, converted outside the timing).

Where a rule has no polars expression (mojibake repair, the phone rule's look-behind, image headers, the
rewrites of ``fix_image_tokens`` / ``fix_roles``) the polars side finds the values that need it with expressions
and runs the same Python function on those only, as a polars user would (``map_elements`` on a filtered frame).
Filters return a numpy bool mask; mappers return the ``conversations`` column as a polars Series.
"""

from __future__ import annotations

import polars as pl

ROLE_MAP = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


def _role():
    return pl.element().struct.field("from").replace(ROLE_MAP)


def _texts_of(role: str):
    """The turns of ``role`` (``all``: every non-system turn) inside ``list.eval``."""
    if role == "all":
        return pl.element().filter(_role() != "system")
    return pl.element().filter(_role() == role)


def _value():
    return pl.element().struct.field("value")


def _with_values(df, expr) -> pl.Series:
    return df.select(pl.col("conversations").list.eval(pl.element().struct.with_fields(expr))).to_series()


def _mask(df, expr):
    return df.select(expr).to_series().to_numpy()


# -- cleaners -----------------------------------------------------------------------------------------------
def clean_whitespace(df, max_newlines: int = 2):
    v = (pl.field("value").str.replace_all(r"\r\n?", "\n").str.replace_all(r"[ \t\f\v\x{A0}\x{3000}]+", " ")
         .str.replace_all(r" ?\n ?", "\n").str.replace_all(r"\n{" + str(max_newlines + 1) + ",}", "\n" * max_newlines)
         .str.strip_chars())
    return _with_values(df, v)


def clean_unicode(df):
    from datacopilot.operators.clean import _CONTROLS, _INVISIBLE, fix_mojibake

    v = pl.field("value").str.replace_all(_INVISIBLE, "").str.replace_all(_CONTROLS, "")
    marker = r"[ÃÂÅ][\x{80}-\x{BF}]|â€|Ã."
    hits = df.select(pl.col("conversations").list.eval(_value().str.contains(marker)).list.any().any()).item()
    if hits:  # mojibake repair has no expression: Python on the values with a marker
        v = pl.when(v.str.contains(marker)).then(v.map_elements(fix_mojibake, return_dtype=pl.String)).otherwise(v)
    return _with_values(df, v.str.normalize("NFC"))


def mask_pii(df):
    from datacopilot.operators.clean import _EMAIL, MaskPII

    op = MaskPII()
    v = pl.field("value").str.replace_all(_EMAIL, "<EMAIL>")
    digits = r"\d{2}[ \-)]?\(?\d{2}"
    hits = df.select(pl.col("conversations").list.eval(_value().str.contains(digits)).list.any().any()).item()
    if hits:  # the phone rule has a look-behind and counts digits: Python on the values that may hold one
        from datacopilot.operators.clean import _PHONE

        v = pl.when(v.str.contains(digits)).then(
            v.map_elements(lambda s: _PHONE.sub(op._phone, s), return_dtype=pl.String)).otherwise(v)
    return _with_values(df, v)


# -- conversation filters -----------------------------------------------------------------------------------
def filter_turns(df, min_turns: int = 2, max_turns: int | None = None):
    n = pl.col("conversations").list.eval(_role() != "system").list.sum()
    keep = n >= min_turns if max_turns is None else n.is_between(min_turns, max_turns)
    return _mask(df, keep.fill_null(min_turns <= 0))


def filter_length(df, role: str = "assistant", unit: str = "chars", min_length: int = 1):
    v = _value().fill_null("")
    length = v.str.len_chars() if unit == "chars" else v.str.count_matches(r"[^\t\n\f\r ]+")
    shortest = pl.col("conversations").list.eval(_texts_of(role).pipe(lambda e: length)).list.min()
    return _mask(df, (shortest >= min_length).fill_null(True))


def filter_empty_turns(df):
    stripped = _value().fill_null("").str.replace_all("<image>", "", literal=True).str.strip_chars()
    conv = pl.col("conversations").list.eval(_texts_of("all"))
    empty = conv.list.eval(stripped.str.len_bytes() == 0).list.any().fill_null(False)
    keys = conv.list.eval(pl.struct(_role().alias("r"), stripped.alias("t")))
    dup = (keys.list.n_unique() < keys.list.len()).fill_null(False)
    return _mask(df, ~empty & ~dup)


def filter_refusals(df, role: str = "assistant"):
    from datacopilot.operators.conversation_filters import REFUSALS

    pattern = "(?i)(?:" + "|".join(REFUSALS) + ")"
    hit = pl.col("conversations").list.eval(_texts_of(role).pipe(
        lambda e: _value().fill_null("").str.contains(pattern))).list.any()
    return _mask(df, ~hit.fill_null(False))


def _repeated_share(grams):
    """1 - distinct / total of the n-grams (0 for fewer than 2), per row."""
    total = grams.list.len()
    return pl.when(total > 1).then(1.0 - grams.list.n_unique() / total).otherwise(0.0)


def _ngrams(n: int, sep: str):
    e = pl.element()
    return pl.concat_str([e.shift(-k) for k in range(n)], separator=sep).drop_nulls()


def filter_repetition(df, role: str = "assistant", char_n: int = 10, word_n: int = 3, max_ratio: float = 0.5):
    """Word n-grams in expressions; character n-grams through the operator's Python ``repetition_ratio`` per row
    (as expressions, ``str.split("")`` and ten shifted ``concat_str`` cost ~10 s per 1,000 rows)."""
    from datacopilot.operators.conversation_filters import repetition_ratio

    text = pl.col("conversations").list.eval(_texts_of(role).pipe(lambda e: _value().fill_null(""))).list.join("\n")
    words = text.str.extract_all(r"\S+").list.eval(_ngrams(word_n, "\x00"))
    chars = text.map_elements(lambda s: repetition_ratio(s, char_n), return_dtype=pl.Float64)
    bad = (_repeated_share(words) > max_ratio) | (chars > max_ratio)
    return _mask(df, ~bad.fill_null(False))


def filter_special_chars(df, role: str = "all", max_ratio: float = 0.25):
    from datacopilot.operators.conversation_filters import _SPECIAL

    v = _value().fill_null("").str.replace_all("<image>", "", literal=True)
    turns = pl.col("conversations").list.eval(_texts_of(role))
    special = turns.list.eval(v.str.count_matches(_SPECIAL)).list.sum().fill_null(0)
    length = turns.list.eval(v.str.len_chars()).list.sum().fill_null(0)
    return _mask(df, special / pl.max_horizontal(length, 1) <= max_ratio)


# -- repair -------------------------------------------------------------------------------------------------
def _image_count():
    return pl.col("image").is_not_null().cast(pl.Int64)


def _token_count():
    return pl.col("conversations").list.eval(
        _value().fill_null("").str.count_matches("<image>", literal=True)).list.sum().fill_null(0)


def filter_image_tokens(df):
    return _mask(df, _token_count() == _image_count())


def fix_image_tokens(df):
    """Rows whose placeholder count differs from their images, found with expressions, fixed in Python (the
    operator's own rewrite of one conversation), put back in place."""
    from datacopilot.operators import create

    op = create("fix_image_tokens")
    bad = df.with_row_index("_i").filter(_token_count() != _image_count())
    if bad.height == 0:
        return df["conversations"]
    return _put_back(df, bad, op)


def _put_back(df, bad, op) -> pl.Series:
    """``df``'s conversations with the rows of ``bad`` (``_i``: their index) replaced by ``op``'s rewrite."""
    fixed = pl.from_arrow(op.map_batch(bad.drop("_i").to_arrow().to_batches()[0]).column("conversations"))
    where = pl.int_range(df.height, eager=True).scatter(bad["_i"], pl.int_range(df.height, df.height + bad.height,
                                                                                  eager=True))
    return pl.concat([df["conversations"], fixed.alias("conversations")]).gather(where)


def fix_roles(df):
    """Rows whose roles do not alternate (two same raw roles in a row, or an answer before the first question),
    found with expressions, fixed in Python (the operator's rewrite), put back in place."""
    from datacopilot.operators import create

    op = create("fix_roles")
    raw = pl.element().struct.field("from")
    repeat = pl.col("conversations").list.eval(raw.eq_missing(raw.shift(1)) & (pl.int_range(pl.len()) > 0)).list.any()
    role = _role()
    early = pl.col("conversations").list.eval(
        ((role == "assistant") & ((role == "user").cum_sum() == 0)).fill_null(False)).list.any()
    bad = df.with_row_index("_i").filter((repeat | early).fill_null(False))
    if bad.height == 0:
        return df["conversations"]
    return _put_back(df, bad, op)


# -- image filters (embedded bytes) ------------------------------------------------------------------------
def _image_size(b: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(b)).size


def image_sizes(df) -> pl.DataFrame:
    """Width and height of each embedded image (Pillow reads the header; no expression can)."""
    size = pl.col("image").struct.field("bytes").map_elements(
        lambda b: list(_image_size(b)), return_dtype=pl.List(pl.Int64))
    return df.select(size.list.get(0).alias("w"), size.list.get(1).alias("h"))


def filter_image_size(df, min_width: int = 1, min_height: int = 1):
    s = image_sizes(df)
    return _mask(s, (pl.col("w") >= min_width) & (pl.col("h") >= min_height))


def filter_aspect_ratio(df, min_ratio: float = 0.25, max_ratio: float = 4.0):
    s = image_sizes(df)
    return _mask(s, (pl.col("w") / pl.max_horizontal(pl.col("h"), 1)).is_between(min_ratio, max_ratio))


def filter_file_size(df, min_bytes: int = 0, max_bytes: int | None = None):
    size = pl.col("image").struct.field("bytes").bin.size()
    keep = size >= min_bytes if max_bytes is None else size.is_between(min_bytes, max_bytes)
    return _mask(df, keep.fill_null(True))
