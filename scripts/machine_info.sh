#!/usr/bin/env bash
# Where a run happens: CPU model, the ISA flags vLLM's CPU kernels choose by, NUMA memory (what
# vLLM sizes engines against) and the pip cache (a warm cache hides a slow install).
set -u
echo "== machine =="
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores)"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa=""
for f in avx2 avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16; do
  case " $flags " in *" $f "*) isa="$isa $f";; esac
done
echo "isa flags:${isa:- none of avx2/avx512/amx}"
for n in /sys/devices/system/node/node[0-9]*; do
  [ -r "$n/meminfo" ] || continue
  awk -v node="$(basename "$n")" '/MemTotal|MemFree/ {v[$3]=$4} END {
    printf "numa %s: MemTotal %.2f GiB, MemFree %.2f GiB\n", node, v["MemTotal:"]/1048576, v["MemFree:"]/1048576}' "$n/meminfo"
done
free -g | awk 'NR==2 {print "host memory: " $2 " GiB total, " $7 " GiB available"}'
cache=$(python3 -m pip cache dir 2>/dev/null || echo "?")
if [ -d "$cache" ]; then
  echo "pip cache: $cache, $(du -sh "$cache" 2>/dev/null | cut -f1) (warm: installs may look faster than on a fresh box)"
else
  echo "pip cache: $cache, empty (cold install)"
fi
echo "python: $(python3 --version 2>&1); date: $(date -u '+%Y-%m-%d %H:%M UTC')"
