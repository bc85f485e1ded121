#!/bin/bash
# usage: queue.sh QUEUEFILE  -- runs ft.py with each line's args, popping lines from the top (lines can be appended while it runs)
cd "$(dirname "$0")"; export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false; PY=${PY:-../../.venv/bin/python}
q=$1
while true; do
  line=$(head -n1 "$q"); [ -z "$line" ] && break
  sed -i 1d "$q"
  echo "$(date +%T) START $line" >> queue_$(basename $q).log
  $PY ft.py $line > "logs/ft_$(echo $line | tr ' -' '_' | tr -s _).log" 2>&1
  echo "$(date +%T) END $line" >> queue_$(basename $q).log
done
