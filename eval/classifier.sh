#!/usr/bin/env bash
# Evaluate the content classifier on the SpamAssassin public corpus subset, read in place
# (never copied: it is real 2002 personal mail). Usage: eval/classifier.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-${MAILWARDEN_TESTDATA:-../shared/testdata}/spam-corpus-spamassassin-public}
cargo run -q --release -p mailwarden --example eval_classifier -- "$CORPUS"
