#!/usr/bin/env bash
# Side by side on fresh machines of a lab of its own ("compare"), in one run:
# the naive script a person would write (bench/naive.sh: one host after another,
# apt-get install, copy, make, insmod, cat), cold and a second time; deploy.yml
# cold and with no change; an `ansible all -m ping` round; cold deploy.yml on 2
# machines (debian12 + debian13) and on 4 (two of each). The lab is taken down
# and brought up again before each cold run, so each starts on fresh machines.
# Prints seconds per step, then the ratios against their targets (issue 9).
# Usage: bench/compare.sh [--skip-4] [--cpus N]
#   --skip-4   leave out the 4-machine part (the slowest)
#   --cpus N   N virtual CPUs per machine (default: the lab's, the host's cores shared among the machines)
# Each step's output goes to a log in a temporary directory; it is removed at
# the end, and kept (its path printed) when a step fails. A failed step ends the
# run and gets no figure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_NOCOLOR=1 # plain logs: the recap is read for changed=0

usage="usage: bench/compare.sh [--skip-4] [--cpus N]"
skip4=false
cpus=()
while (($#)); do
	case $1 in
	--skip-4) skip4=true && shift ;;
	--cpus)
		if ! [[ ${2-} =~ ^[1-9][0-9]*$ ]]; then
			echo "$usage" >&2
			exit 2
		fi
		cpus=(--cpus "$2")
		shift 2
		;;
	*)
		echo "$usage" >&2
		exit 2
		;;
	esac
done

lab=compare
workdir=$(mktemp -d)
inventory=$workdir/compare.yml # a new path: up writes only files of its own

finish() {
	local status=$1
	python -m kmodlab --lab "$lab" down >>"$workdir/down.log" 2>&1 || status=1
	if ((status == 0)); then
		rm -rf "$workdir"
	else
		echo "bench/compare.sh: failed; logs kept in $workdir" >&2
	fi
}
trap 'finish $?' EXIT

declare -A took # step -> microseconds
now() { echo "${EPOCHREALTIME//[!0-9]/}"; } # microseconds (EPOCHREALTIME has 6 decimals)
seconds() {                                 # microseconds -> seconds, rounded to 0.1
	local tenths=$((($1 + 50000) / 100000))
	printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

# step KEY LABEL COMMAND...: run COMMAND, its output to KEY's log, and print its time.
step() {
	local key=$1 label=$2 start
	shift 2
	start=$(now)
	if ! "$@" >"$workdir/$key.log" 2>&1 </dev/null; then
		printf '%-36s FAILED, last lines of %s:\n' "$label" "$workdir/$key.log" >&2
		tail -n 20 "$workdir/$key.log" >&2
		exit 1
	fi
	took[$key]=$(($(now) - start))
	printf '%-36s %7s s\n' "$label" "$(seconds "${took[$key]}")"
}

# fresh KEY LABEL --vm ...: take the lab down and bring it up with the machines given.
fresh() {
	local key=$1 label=$2
	shift 2
	python -m kmodlab --lab "$lab" down >>"$workdir/down.log" 2>&1 || {
		echo "down: FAILED, see $workdir/down.log" >&2
		exit 1
	}
	step "$key" "$label" python -m kmodlab --lab "$lab" up --inventory "$inventory" ${cpus[@]+"${cpus[@]}"} "$@"
	echo "  vCPUs per machine: $(grep -o '[0-9]* vCPU)' "$workdir/$key.log" | sort -u | tr -d ')' | paste -sd,)"
}

# unchanged KEY: every host of KEY's Ansible recap reports changed=0.
unchanged() {
	grep -q ' changed=0 ' "$workdir/$1.log" && ! grep -E ' changed=[1-9]' "$workdir/$1.log" >&2
}

# The proxy the machines' apt uses, and whether the headers of their kernels are
# in an apt-cacher-ng cache on this controller already (else: a first run).
apt_report() {
	local proxy conf dir kernel found dirs=() missing=()
	# shellcheck disable=SC2016 # expanded on the machine
	proxy=$(python -m kmodlab --lab "$lab" ssh a 'eval "$(apt-config shell p Acquire::http::Proxy)"; echo "${p-}"' </dev/null) || {
		echo "apt: FAILED to ask machine a which proxy its apt uses" >&2
		exit 1
	}
	if [[ -z $proxy ]]; then
		echo "apt: the machines use no proxy: every apt-get, the naive script's and deploy.yml's, downloads from the mirror"
		return
	fi
	echo "apt: the machines use the proxy $proxy on this controller; the naive script's apt-get goes through it too"
	conf=$(sed -n 's/^CacheDir:[[:space:]]*//p' /etc/apt-cacher-ng/acng.conf 2>/dev/null || true)
	for dir in ${conf:+"$conf"} /var/cache/apt-cacher-ng "${KMODLAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kmodlab}" "${KMODLAB_HOME:-$PWD/.lab}"; do
		if [[ -d $dir && " ${dirs[*]} " != *" $dir "* ]]; then
			dirs+=("$dir")
		fi
	done
	for kernel in $(python -m kmodlab --lab "$lab" status --json | python -c 'import json, sys; print(*sorted({m["kernel"] for m in json.load(sys.stdin)}))'); do
		found=""
		if ((${#dirs[@]})); then
			found=$(find "${dirs[@]}" -name "linux-headers-${kernel}_*.deb" -print -quit 2>/dev/null || true)
		fi
		[[ -n $found ]] || missing+=("$kernel")
	done
	if ((${#missing[@]} == 0)); then
		echo "apt: warm cache: not a first run (the headers of the machines' kernels are cached already)"
	else
		echo "apt: a first run: no cached headers for ${missing[*]} (looked in ${dirs[*]});" \
			"the naive cold run pays the downloads and fills the cache that deploy.yml's cold run then uses: run again for figures on a warm cache"
	fi
}

two=(--vm a=debian12 --vm b=debian13)
four=(--vm a=debian12 --vm b=debian13 --vm c=debian12 --vm d=debian13)

python -m kmodlab --lab "$lab" down >"$workdir/down.log" 2>&1
step image "image (cached or built)" python -m kmodlab image debian12 debian13

fresh up2 "up: 2 fresh machines" "${two[@]}"
ssh_config=$(python -c 'import sys; from kmodlab.lab import Lab; print(Lab(sys.argv[1]).ssh_config)' "$lab")
read -ra ports <<<"$(python -m kmodlab --lab "$lab" status --json | python -c 'import json, sys; print(*(m["port"] for m in json.load(sys.stdin)))')"
apt_report
step naive_cold "naive script, cold (2 machines)" bench/naive.sh "$ssh_config" "${ports[@]}"
step naive_second "naive script, second run" bench/naive.sh "$ssh_config" "${ports[@]}"

fresh up2_again "up: 2 fresh machines again" "${two[@]}"
step deploy_cold "deploy.yml, cold (2 machines)" ansible-playbook -i "$inventory" deploy.yml
step deploy_again "deploy.yml, no change" ansible-playbook -i "$inventory" deploy.yml
unchanged deploy_again || {
	echo "deploy.yml, no change: the second run changed something; see $workdir/deploy_again.log" >&2
	exit 1
}
step ping "ansible all -m ping" ansible all -i "$inventory" -m ping

if ! $skip4; then
	fresh up4 "up: 4 fresh machines" "${four[@]}"
	step deploy_cold4 "deploy.yml, cold (4 machines)" ansible-playbook -i "$inventory" deploy.yml
fi

echo
printf '%-36s %7s\n' step seconds
for key in naive_cold naive_second deploy_cold deploy_again ping deploy_cold4; do
	[[ -v took[$key] ]] || continue
	case $key in
	naive_cold) label="naive script, cold" ;;
	naive_second) label="naive script, second run" ;;
	deploy_cold) label="deploy.yml, cold" ;;
	deploy_again) label="deploy.yml, no change" ;;
	ping) label="ansible all -m ping" ;;
	deploy_cold4) label="deploy.yml, cold, 4 machines" ;;
	esac
	printf '%-36s %7s\n' "$label" "$(seconds "${took[$key]}")"
done

# ratio LABEL A B [>=|<= TARGET]: A/B in two decimals; TARGET (a decimal with at
# most two places) is met or not, compared exactly.
ratio() {
	local label=$1 a=${took[$2]} b=${took[$3]} op=${4-} target=${5-} verdict=met whole frac
	local r=$(((a * 100 + b / 2) / b))
	whole=${target%.*}
	frac=${target#"$whole"}
	frac=${frac#.}00
	local t=$((10#$whole * 100 + 10#${frac:0:2}))
	case $op in
	'>=') ((a * 100 >= t * b)) || verdict="not met" ;;
	'<=') ((a * 100 <= t * b)) || verdict="not met" ;;
	*) verdict="no target: as measured" ;;
	esac
	printf '%-36s %6d.%02dx  %-8s %s\n' "$label" $((r / 100)) $((r % 100)) "${op:+$op ${target}x}" "$verdict"
}

echo
printf '%-36s %8s  %-8s %s\n' ratio value target verdict
ratio "naive cold / deploy.yml cold" naive_cold deploy_cold '>=' 1.5
ratio "naive second / deploy.yml no change" naive_second deploy_again '>=' 10
ratio "deploy.yml no change / ping" deploy_again ping '<=' 2
if ! $skip4; then
	ratio "deploy.yml cold: 4 machines / 2" deploy_cold4 deploy_cold "" 0
fi
