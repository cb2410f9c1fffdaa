"""Property-based fuzzing of a live `meshd run` from its own `/api/openapi.json` (issue 9).

Schemathesis generates requests for every operation of the document, valid and invalid ones,
and checks that none is answered 5xx and that every answer matches the schema the document
gives for its status. Admin operations are fuzzed without a valid admin key (they answer
403): their real effects (restores, restarts) would make the run flaky. The examples per
operation are bounded and derandomized, so a run is repeatable and takes about a minute.
"""

from __future__ import annotations

import shutil

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from meshd.api.openapi import DOCUMENT
from tests.process.harness import MeshdProcess, short_tmp_dir

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]

ADMIN_KEY = "fuzz-admin-key-not-sent"
EXAMPLES = 30


@pytest.fixture(scope="module")
def live_meshd():
    proc = MeshdProcess(root=short_tmp_dir())
    try:
        proc.start(["--admin-key", ADMIN_KEY, "--access-log", "false", "--log-level",
                    "warning"])
        proc.wait_healthy()
        yield proc
    finally:
        proc.kill_tree()
        shutil.rmtree(proc.root, ignore_errors=True)


@pytest.fixture(scope="module")
def base_url(live_meshd):
    """meshd's address, once the document it serves is checked to be the one fuzzed here."""
    served = requests.get(f"{live_meshd.url}/api/openapi.json", headers=live_meshd.headers,
                          timeout=10)
    assert served.status_code == 200 and served.json() == orjson.loads(orjson.dumps(DOCUMENT))
    return live_meshd.url


@pytest.fixture(scope="module")
def session(live_meshd):
    with requests.Session() as s:
        s.headers["X-API-Key"] = live_meshd.key
        yield s


# Loaded at collection (one test per operation); `base_url` checks meshd serves this document.
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_answer_matches_the_document(case, session, base_url):
    case.headers = {k: v for k, v in (case.headers or {}).items()
                    if k.lower() != "x-admin-key"}  # never a valid operator key
    case.call_and_validate(base_url=base_url, session=session, timeout=10,
                           checks=[not_a_server_error, response_schema_conformance])
