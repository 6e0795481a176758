"""
Finding jobs: their optional name and labels (what they may hold), and the
filter of a listing or a bulk delete. Pure: parsing raises L{BadRequest}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest
from .records import JobRecord, JobStatus

#: A job name: a word a person types (letters, digits, C{._:@+-}), 1-128.
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}\Z")
#: A label key (as Kubernetes' names, C{team}, C{app.kubernetes.io/name}).
LABEL_KEY = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,62}\Z")
#: The most labels one job may carry, and the longest label value.
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
#: A label value: no control characters (C0, DEL, C1) and no lone
#: surrogate (not Unicode text: a strict JSON parser refuses a listing
#: holding one), at most 256.
LABEL_VALUE = re.compile(r"\A[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{0,256}\Z")
#: An id prefix: at least 6 of a job id's characters.
ID_PREFIX = re.compile(r"\A[0-9a-f][0-9a-f-]{5,35}\Z")


def parseName(value: object) -> str | None:
    """A request's C{name} (None: no name)."""
    if value is None:
        return None
    if not isinstance(value, str) or not NAME.match(value):
        raise BadRequest(
            "name must be 1 to 128 ASCII letters, digits or ._:@+- (starting "
            "with a letter or digit)"
        )
    return value


def _labelValue(value: object, key: str) -> str:
    if not isinstance(value, str) or not LABEL_VALUE.match(value):
        raise BadRequest(
            f"label {key!r} must be text of at most {MAX_LABEL_VALUE} characters, "
            "no control characters (nor lone surrogates)"
        )
    return value


def _labelKey(key: object) -> str:
    if not isinstance(key, str) or not LABEL_KEY.match(key):
        raise BadRequest(
            f"label name {key!r} must be 1 to 63 letters, digits or ._/- "
            "(starting with a letter or digit)"
        )
    return key


def parseLabels(value: object) -> dict[str, str]:
    """A request's C{labels}: an object of at most L{MAX_LABELS} strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("labels must be an object of strings")
    if len(value) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} labels")
    return {_labelKey(k): _labelValue(v, k) for k, v in value.items()}


def parseLabelFilters(values: list[str]) -> tuple[tuple[str, str], ...]:
    """C{?label=k=v&label=...}: the pairs every listed job must carry."""
    if len(values) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} label filters")
    pairs = []
    for text in values:
        key, sep, value = text.partition("=")
        if not sep:
            raise BadRequest(f"label filter {text!r} must be name=value")
        pairs.append((_labelKey(key), _labelValue(value, key)))
    return tuple(pairs)


def parseIdPrefix(text: str | None) -> str | None:
    """C{?id_prefix=}: 6 to 36 of an id's first characters."""
    if text is None:
        return None
    if not ID_PREFIX.match(text):
        raise BadRequest("id_prefix must be 6 to 36 characters of a job id")
    return text


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing (or a bulk delete) is about; None: any."""

    status: JobStatus | None = None
    owner: str | None = None
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    idPrefix: str | None = None
    #: Only jobs that ended before this time (bulk delete).
    endedBefore: float | None = None

    @property
    def conditions(self) -> int:
        """How many filters it has (one leads a search; the rest are tested
        job by job)."""
        return len(self.labels) + sum(
            value is not None
            for value in (
                self.status,
                self.owner,
                self.name,
                self.idPrefix,
                self.endedBefore,
            )
        )

    def picks(self, record: JobRecord) -> bool:
        """Whether this filter picks C{record}, as the store's query would."""
        return (
            (self.status is None or record.status is self.status)
            and (self.owner is None or record.owner == self.owner)
            and (self.name is None or record.name == self.name)
            and all(record.labels.get(key) == value for key, value in self.labels)
            and (self.idPrefix is None or record.id.startswith(self.idPrefix))
            and (
                self.endedBefore is None
                or (record.ended_at is not None and record.ended_at < self.endedBefore)
            )
        )

    def query(self) -> tuple[str, str, list[str], list[object]]:
        """
        For L{JobStore}: the source (C{jobs}, joined to the index of its
        first label if it filters by labels and by no owner or name), the
        column to order and page by (C{seq}, or that index's), SQL
        conditions and their parameters. A label drives the search through
        its index (key, value, seq): a label matching no job, or every job,
        costs a page, never a scan of every record's labels.
        """
        where: list[str] = []
        params: list[object] = []
        source, order = "jobs", "jobs.seq"
        # The first label drives the search, unless an owner or a name does
        # (their indexes hold one user's or one name's jobs: a label common
        # to every job, asked with an owner who has none, read them all).
        drive = self.owner is None and self.name is None
        for index, (key, value) in enumerate(self.labels):
            if index == 0 and drive:
                source = "job_labels AS first JOIN jobs ON jobs.seq = first.seq"
                order = "first.seq"
                where.append("first.key = ? AND first.value = ?")
            else:
                where.append(
                    "EXISTS (SELECT 1 FROM job_labels AS other WHERE other.key = ? "
                    "AND other.value = ? AND other.seq = jobs.seq)"
                )
            params.extend([key, value])
        for column, wanted in (
            ("status", None if self.status is None else self.status.value),
            ("owner", self.owner),
            ("name", self.name),
        ):
            if wanted is not None:
                where.append(f"jobs.{column} = ?")
                params.append(wanted)
        if self.idPrefix is not None:
            # Ids and prefixes are lowercase hex and "-", all before "~".
            where.append("jobs.id >= ? AND jobs.id < ?")
            params.extend([self.idPrefix, self.idPrefix + "~"])
        if self.endedBefore is not None:
            where.append("jobs.ended_at IS NOT NULL AND jobs.ended_at < ?")
            params.append(self.endedBefore)
        return source, order, where, params


#: The filter that picks every job.
ANY_JOB = JobFilter()
