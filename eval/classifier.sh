#!/usr/bin/env bash
# Evaluate content scoring at the default thresholds on the SpamAssassin public corpus subset,
# read in place (never copied: it is real 2002 personal mail): training as `mailwarden learn`
# does (counts and weights), then the held-out 30% through the server's content pipeline.
# Usage: eval/classifier.sh [CORPUS_DIR] [--builtin]   (--builtin: keep the built-in weights)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-${MAILWARDEN_TESTDATA:-../shared/testdata}/spam-corpus-spamassassin-public}
shift || true
cargo run -q --release -p mailwarden --example eval_classifier -- "$CORPUS" "$@"
