#!/usr/bin/env bash
# Omniglot at the paper's protocol (Fig. 6c) and the start question, trial by trial.
#
#   scripts/omniglot-protocol.sh all50|init10 [DATA_DIR]
#
# all50:  50 alphabets, 105x105, 5,000 iterations: parallel, permuted, single and soft ordering at
#         10% test, parallel and soft at 20% test.
# init10: 10 alphabets, 5,000 iterations: soft and parallel ordering, He-normal and Keras starts.
# Each finished trial writes its record to results/omniglot/ (commit it); a trial whose record is
# there is skipped, so the script resumes where it stopped. One thread per trial; run the two
# queues side by side on a two-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
queue=${1:?usage: $0 all50|init10 [DATA_DIR]}
data=${2:-../shared/data}

trial() {  # tasks fraction method init seed
  local tasks=$1 fraction=$2 method=$3 init=$4 seed=$5
  softorder --threads 1 reproduce omniglot --data-dir "$data" \
    --out "runs/omniglot-protocol/tasks=$tasks-test=$fraction-$method-$init" \
    --set "num_tasks=[$tasks]" --set "test_fractions=[$fraction]" --set "methods=[\"$method\"]" \
    --set "init=\"$init\"" --set trials=3 --set records=results/omniglot \
    --trial "tasks=$tasks/test=$fraction/$method/trial=$seed"
}

case $queue in
  all50)
    for seed in 0 1 2; do trial 50 0.1 parallel he $seed; done
    trial 50 0.1 permuted he 0
    trial 50 0.1 single he 0
    trial 50 0.2 parallel he 0
    for seed in 0 1 2; do trial 50 0.1 soft he $seed; done
    trial 50 0.2 soft he 0
    ;;
  init10)
    for init in he keras; do for seed in 0 1 2; do trial 10 0.1 parallel $init $seed; done; done
    for init in he keras; do for seed in 0 1 2; do trial 10 0.1 soft $init $seed; done; done
    ;;
  *) echo "unknown queue $queue; expected all50 or init10" >&2; exit 2 ;;
esac
