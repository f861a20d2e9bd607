"""The user's own two idempotency scenarios, as an OpenAI SDK user sees them.

The user's client names the key `idem_tok` in the request body and points the
batch at an input file that does not exist; both must keep working.
"""

from __future__ import annotations

import openai
import pytest

from conftest import bogus_file_id, unique_key


def test_repeating_a_create_with_the_same_token_returns_the_original_batch(client: openai.OpenAI):
    token = unique_key("seed-replay")
    missing_file = bogus_file_id()

    original = client.batches.create(
        input_file_id=missing_file,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"scenario": "replay", "origin": "seed"},
        extra_body={"idem_tok": token},
    )
    # The retry lists the metadata pairs the other way round; that is the
    # same request, so the server must hand back the very same batch.
    again = client.batches.create(
        input_file_id=missing_file,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"origin": "seed", "scenario": "replay"},
        extra_body={"idem_tok": token},
    )

    assert again.id == original.id
    assert again.created_at == original.created_at
    assert again.input_file_id == original.input_file_id == missing_file
    assert again.endpoint == original.endpoint == "/v1/chat/completions"
    assert again.completion_window == original.completion_window == "24h"
    assert again.metadata == original.metadata == {"scenario": "replay", "origin": "seed"}


def test_reusing_a_token_for_a_different_request_is_a_conflict(client: openai.OpenAI):
    token = unique_key("seed-conflict")
    first_file, second_file = bogus_file_id(), bogus_file_id()

    original = client.batches.create(
        input_file_id=first_file,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"attempt": "first"},
        extra_body={"idem_tok": token},
    )

    with pytest.raises(openai.ConflictError) as caught:
        client.batches.create(
            input_file_id=second_file,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"attempt": "second"},
            extra_body={"idem_tok": token},
        )
    assert caught.value.status_code == 409
    assert "conflict" in str(caught.value).lower()

    # The rejected request left the first batch exactly as it was.
    stored = client.batches.retrieve(original.id)
    assert stored.id == original.id
    assert stored.input_file_id == first_file
    assert stored.metadata == {"attempt": "first"}
    assert stored.created_at == original.created_at
