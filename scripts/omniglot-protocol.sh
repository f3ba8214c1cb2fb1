#!/usr/bin/env bash
# Omniglot at the paper's protocol (Fig. 6c) and the start question, trial by trial.
#
#   scripts/omniglot-protocol.sh soft50|init10|others [DATA_DIR]
#
# soft50: soft ordering on all 50 alphabets, 105x105, 5,000 iterations: 3 seeds at 10% test, 1 at 20%
#         (about 2 h a trial at one thread alone, more beside another trial: start it early in a session).
# init10: the start question alone (below), shortest trials first.
# others: the same for parallel (3 seeds at 10%, 1 at 20%), permuted and single task (1 seed at 10%),
#         and the start question: 10 alphabets, 5,000 iterations, soft and parallel ordering with
#         He-normal and Keras (Glorot-uniform) starts, 3 seeds each.
# Each finished trial writes its record to results/omniglot/ (commit it); a trial whose record is
# there is skipped, so the script resumes where it stopped. One thread per trial (THREADS=N to
# change it, e.g. THREADS=2 for a soft50 trial alone on a two-core machine: about 1.2 h); run two
# one-thread queues side by side on a two-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
queue=${1:?usage: $0 soft50|init10|others [DATA_DIR]}
data=${2:-../shared/data}
threads=${THREADS:-1}

trial() {  # tasks fraction method init seed
  local tasks=$1 fraction=$2 method=$3 init=$4 seed=$5
  softorder --threads "$threads" reproduce omniglot --data-dir "$data" \
    --out "runs/omniglot-protocol/tasks=$tasks-test=$fraction-$method-$init-threads=$threads" \
    --set "num_tasks=[$tasks]" --set "test_fractions=[$fraction]" --set "methods=[\"$method\"]" \
    --set "init=\"$init\"" --set trials=3 --set records=results/omniglot --set "threads=$threads" \
    --trial "tasks=$tasks/test=$fraction/$method/trial=$seed"
}

case $queue in
  soft50)  # the longest trials (about 2 h each at one thread): a queue of their own
    for seed in 0 1 2; do trial 50 0.1 soft he $seed; done
    trial 50 0.2 soft he 0
    ;;
  init10)  # the start question first: short trials that finish inside one session
    for init in he keras; do for seed in 0 1 2; do trial 10 0.1 parallel $init $seed; done; done
    for seed in 0 1 2; do for init in he keras; do trial 10 0.1 soft $init $seed; done; done
    ;;
  others)
    for seed in 0 1 2; do trial 50 0.1 parallel he $seed; done
    for init in he keras; do for seed in 0 1 2; do trial 10 0.1 parallel $init $seed; done; done
    trial 50 0.1 permuted he 0
    trial 50 0.1 single he 0
    trial 50 0.2 parallel he 0
    for init in he keras; do for seed in 0 1 2; do trial 10 0.1 soft $init $seed; done; done
    ;;
  *) echo "unknown queue $queue; expected soft50, init10 or others" >&2; exit 2 ;;
esac
