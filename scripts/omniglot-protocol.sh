#!/usr/bin/env bash
# Omniglot at the paper's protocol (Fig. 6c) and the start question, trial by trial.
#
#   [THREADS=N] [JOBS=N] scripts/omniglot-protocol.sh soft50|init10|others|all [DATA_DIR]
#
# soft50: soft ordering on all 50 alphabets, 105x105, 5,000 iterations: 3 seeds at 10% test, 1 at 20%
#         (a training step takes 1.4 s at one thread on an AVX-512 Xeon, 4.4 s on an AVX2 EPYC: 2 to 6 h
#         a trial, which fits a 3-hour session only on the former, alone).
# init10: the start question alone (below), shortest trials first.
# others: the same for parallel (3 seeds at 10%, 1 at 20%), permuted and single task (1 seed at 10% and 20%),
#         and the start question: 10 alphabets, 5,000 iterations, soft and parallel ordering with
#         He-normal and Keras (Glorot-uniform) starts, 3 seeds each.
# all:    every trial, JOBS (default 1) at a time: for a machine with a GPU (device "auto" uses it).
# Each finished trial writes its record to results/omniglot/ (commit it); a trial whose record is
# there is skipped, so the script resumes where it stopped. One thread per trial (THREADS=N to
# change it, e.g. THREADS=2 for one trial alone on a two-core machine); run two one-thread queues
# side by side on a two-core machine. To stop a queue, stop its whole process group (e.g. `kill -- -PGID`,
# PGID from `ps -o pgid`): killing the script alone leaves its xargs running, which starts the next trial.
set -euo pipefail
cd "$(dirname "$0")/.."
queue=${1:?usage: [THREADS=N] [JOBS=N] $0 soft50|init10|others|all [DATA_DIR]}
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

grid() {  # every trial of the protocol, one per line: tasks fraction method init seed
  for seed in 0 1 2; do echo "50 0.1 soft he $seed"; done
  echo "50 0.2 soft he 0"
  for seed in 0 1 2; do echo "50 0.1 parallel he $seed"; done
  echo "50 0.1 permuted he 0"; echo "50 0.1 single he 0"; echo "50 0.2 parallel he 0"
  echo "50 0.2 permuted he 0"; echo "50 0.2 single he 0"
  for init in he keras; do for seed in 0 1 2; do echo "10 0.1 parallel $init $seed"; done; done
  for seed in 0 1 2; do for init in he keras; do echo "10 0.1 soft $init $seed"; done; done
}

case $queue in
  soft50) pick='$1 == 50 && $3 == "soft"' ;;  # the longest trials: a queue of their own
  init10) pick='$1 == 10' ;;  # the start question alone
  others) pick='!($1 == 50 && $3 == "soft")' ;;
  all) pick='1' ;;  # everything, JOBS trials at once (e.g. JOBS=8 on a GPU machine)
  *) echo "unknown queue $queue; expected soft50, init10, others or all" >&2; exit 2 ;;
esac
export -f trial
export data threads
grid | awk "$pick" | xargs -P "${JOBS:-1}" -L 1 bash -c 'trial "$@"' trial
