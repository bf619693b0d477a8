# ruff: noqa: E501, E702 - a table of code fragments, kept one mutation per line
"""Mutation checks of the protections tests/security and test_reliability guard: apply one mutation at a time to a
scratch worktree, run the test that should catch it, restore, and print the outcome (rc=1: the test failed, as it
should). Usage: ``git worktree add /tmp/mut HEAD && python tests/security/mutate.py /tmp/mut [NAME ...]``."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MUT = Path(sys.argv[1]).resolve()
PATHS = Path(tempfile.mkdtemp(prefix="probekit-mut-"))  # the scratch copy's packages, first on sys.path
(PATHS / "probekit").symlink_to(MUT / "probekit")
(PATHS / "probekit_plugins").symlink_to(MUT / "plugins")
S = "tests/security/test_security_results.py"
M = "tests/security/test_security_model_files.py"
T = "tests/security/test_security_stores.py"
mutations = [
 ("programs-no-trust-check", "probekit/models/model_files.py", "if kind in PROGRAMS and not options.trust_code:", "if False:", f"{M}::test_hostile_file_is_refused_and_runs_nothing"),
 ("pickle-weights-only-false", "probekit/models/safe_pickle.py", "    if trust:\n        return torch.load(path, map_location=\"cpu\", weights_only=False)", "    if True:\n        return torch.load(path, map_location=\"cpu\", weights_only=False)", f"{M}::test_hostile_file_is_refused_and_runs_nothing"),
 ("any-probekit-class", "probekit/models/safe_pickle.py", "    if not (qualified.startswith(LIBRARY_PREFIXES) or module in model_modules()):\n        return None\n    _import_allowed_modules()\n    obj = _lookup(qualified)\n    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):\n        return None\n    home = obj.__module__  # where the class is defined, not where the file says it lives\n    return obj if home.startswith(LIBRARY_PREFIXES) or home in model_modules() else None",
  "    if not qualified.startswith(LIBRARY_PREFIXES + ('probekit.',)):\n        return None\n    import importlib\n    parts = qualified.split('.')\n    for cut in range(len(parts) - 1, 0, -1):\n        try:\n            obj = importlib.import_module('.'.join(parts[:cut]))\n        except ImportError:\n            continue\n        for attr in parts[cut:]:\n            obj = getattr(obj, attr)\n        return obj if isinstance(obj, type) else None\n    return None",
  f"{M}::test_allowlisted_package_helper_is_refused {M}::test_cli_module_global_is_refused_without_importing_it"),
 ("raw-messages", "probekit/errors.py", "        super().__init__(escape(message))", "        super().__init__(message)", None),
 ("raw-names", "probekit/errors.py", "    return f\"'{escape(name, MAX_SHOWN)}'\"", "    return f\"'{name}'\"", None),
 ("arch-stdlib-allowed", "probekit/models/model_files.py", "    if module_name.split(\".\")[0] in sys.stdlib_module_names:", "    if False:", f"{M}::test_arch_accepts_only_module_builders"),
 ("no-lock", "probekit/store/lock.py", "        self.path = store.with_name(store.name + \".lock\")\n", "        self.path = store.with_name(store.name + \".lock\")\n        self._fd = None\n        return\n", f"{S}::test_a_second_run_on_the_same_out_fails_at_once_and_the_first_completes"),
 ("replace-anything", "probekit/store/results.py", "    \"\"\"Refuse to replace anything at ``path`` but a probekit results store.\"\"\"\n", "    \"\"\"Refuse to replace anything at ``path`` but a probekit results store.\"\"\"\n    return\n", f"{S}::test_overwrite_replaces_only_a_probekit_store"),
 ("report-target-unchecked", "probekit/report/html.py", "    target = target.expanduser().resolve()\n", "    return target.expanduser().resolve()\n", f"{S}::test_report_never_deletes_outside_its_own_folder"),
 ("resume-any-analysis", "probekit/run/runner.py", "    if resume and undeclared:", "    if False:", f"{S}::test_resume_refuses_an_analysis_that_cannot_checkpoint"),
 ("sizes-only", "probekit/store/manifest.py", "        elif crc is not None and file_crc32(found[name]) != crc:", "        elif False:", f"{S}::test_same_size_corruption_is_named_and_the_other_nodes_stay_readable"),
 ("no-crc32c-codec", "probekit/store/results.py", "    return (ZstdCodec(), Crc32cCodec())", "    return (ZstdCodec(),)", f"{S}::test_chunks_carry_crc32c_so_a_read_that_skips_the_manifest_fails_loudly"),
 ("nan-relative-zero", "probekit/measures/activity_rule.py", "    return np.where(finite, out, np.nan)", "    return np.divide(norm, np.nanmax(norm, axis=-1, keepdims=True))", f"{S}::test_nan_branch_makes_the_flags_unknown_not_silent"),
 ("nan-options", "probekit/run/options.py", "    if kind is float and not math.isfinite(value):", "    if False:", f"{S}::test_non_finite_option_values_are_refused"),
 ("replace-in-place", "probekit/store/results.py", "        self.target = self._sibling(\"new\") if self.replacing else self.path", "        self.target = self.path", f"{S}::test_a_failing_overwrite_keeps_the_old_store_and_leaves_no_staging"),
 ("show-raw", "probekit/store/results.py", "    return \"\\n\".join((\"\\n\" if line.startswith(\"\\n\") else \"\") + escape(line.lstrip(\"\\n\")) for line in lines)", "    return \"\\n\".join(lines)", f"{S}::test_show_escapes_what_a_store_says"),
 ("nproc-cwd", "probekit/run/distributed.py", "    command = [sys.executable, \"-c\", SAFE_PATH_BOOT.format(\"probekit\"), *argv]", "    command = [sys.executable, \"-m\", \"probekit\", *argv]", f"{S}::test_nproc_keeps_the_working_folder_off_sys_path"),
 ("nproc-any-interface", "probekit/run/distributed.py", "\"GLOO_SOCKET_IFNAME\": loopback, ", "", f"{S}::test_nproc_listens_only_on_loopback"),
 ("no-root-status", "probekit/store/results.py", "        group.attrs.update({**attrs, STATUS_ATTR: \"incomplete\", STAGING_ATTR: self.tmp.name})", "        pass", "tests/test_cli.py::test_a_killed_run_keeps_earlier_stores_and_leaves_its_own_readable"),
 ("full-disk-keeps-staging", "probekit/run/runner.py", "    except OSError:\n        writer.drop_staging()\n        raise", "    except OSError:\n        raise", "tests/test_reliability.py::test_a_full_disk_fails_clearly_and_keeps_what_was_written"),
 # issue 29: stores, planted files, plugins, training, combinations
 ("lock-follows-links", "probekit/store/lock.py", "        return create_new(path, os.O_RDWR)", "        return os.open(path, os.O_RDWR | os.O_CREAT)", f"{T}::test_a_planted_lock_symlink_is_refused_and_its_target_untouched"),
 ("predictable-tmp", "probekit/store/files.py", "    tmp = path.with_name(f\".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}\")\n    fd = create_new(tmp)", "    tmp = path.with_name(path.name + \".tmp\")\n    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)", f"{T}::test_atomic_saves_never_write_through_a_planted_name"),
 ("zarr2-accepted", "probekit/store/untrusted.py", "        if name in ZARR2_FILES:", "        if False:", f"{T}::test_a_zarr2_pickle_codec_store_is_refused_and_runs_nothing"),
 ("any-codec", "probekit/store/untrusted.py", "                if name not in ALLOWED_CODECS:", "                if False:", f"{T}::test_a_codec_outside_the_allowlist_is_refused_before_decoding"),
 ("no-root-checksum", "probekit/store/untrusted.py", "    if recorded is not None and recorded != root_checksum(document):", "    if False:", f"{T}::test_a_flipped_root_value_fails_the_root_checksum"),
 ("manifest-keys-unchecked", "probekit/store/untrusted.py", "    for node, files in manifests.items():", "    for node, files in {}.items():", f"{T}::test_manifest_keys_must_be_plain_paths_inside_the_node"),
 ("links-in-store", "probekit/store/untrusted.py", "            mode = os.lstat(path).st_mode", "            mode = os.stat(path).st_mode", f"{T}::test_links_and_special_files_in_a_store_are_refused_unread[symlinked-node]"),
 ("out-symlink", "probekit/store/files.py", "    if path.is_symlink():", "    if False:", f"{T}::test_out_through_a_symlink_is_refused_and_leaves_nothing"),
 ("plugin-import-kills", "probekit/plugins.py", "            _leave_out(ep.name, f\"its module {ep.value} failed to import ({type(exc).__name__}: {exc})\")\n            continue", "            raise", "tests/test_plugin_isolation.py::test_a_broken_plugin_is_left_out_with_one_line_and_the_rest_works[import]"),
 ("no-schema-shim", "probekit/schema.py", "from probekit.api import branch_coords, class_coords, layer_coords, sample_coords", "raise ImportError('probekit.schema is gone')", "tests/test_plugin_isolation.py::test_a_plugin_written_against_the_01_docs_runs_with_a_deprecation_warning"),
 ("channels-last-always", "probekit/zoo/memory_format.py", "    if agree:\n", "    if True:\n", "tests/test_memory_format.py::test_training_gets_channels_last_only_with_gradients_as_accurate_as_contiguous"),
 ("checkpoint-without-staging", "probekit/run/checkpoint.py", "    folder.mkdir(exist_ok=True)", "    pass", "tests/test_matrix.py::test_checkpointed_and_resumed_runs_equal_the_plain_run[classifier:covariance]"),
 ("hessian-forgets-method", "plugins/hessian/__init__.py", "\"zero_within\": \"custom\", \"method\": \"custom\",", "\"zero_within\": \"custom\",", "tests/test_matrix.py::test_checkpointed_and_resumed_runs_equal_the_plain_run[classifier:hessian]"),
 ("complete-before-consolidation", "probekit/store/results.py", "group.attrs.update({**(attrs or {}), \"errors\"", "group.attrs.update({**(attrs or {}), STATUS_ATTR: \"complete\", \"errors\"", "tests/test_one_line_errors.py::test_a_full_disk_while_consolidating_never_leaves_a_complete_store"),
 ("pickled-hooks-run", "probekit/models/loading.py", "        refuse_planted_hooks(obj, spec)", "        pass", "tests/test_one_line_errors.py::test_a_pickled_forward_hook_is_refused_in_run_and_evaluate"),
 ("trust-offered-for-functions", "probekit/models/safe_pickle.py", "    if not all(_plausible_model_class(n) for n in refused):", "    if False:", "tests/test_one_line_errors.py::test_trust_pickle_is_offered_only_for_plausible_model_classes"),
]
only = sys.argv[2:]
for name, file, old, new, tests in mutations:
    if only and name not in only:
        continue
    path = MUT / file
    text = path.read_text()
    if old not in text:
        print(f"{name}: PATTERN NOT FOUND"); continue
    path.write_text(text.replace(old, new))
    try:
        if name in ("raw-messages", "raw-names"):
            if name == "raw-names":
                p1 = MUT / "probekit/errors.py"; t1 = p1.read_text()
                p1.write_text(t1.replace("        super().__init__(escape(message))", "        super().__init__(message)"))
            p2 = MUT / "probekit/cli.py"; t2 = p2.read_text()
            p2.write_text(t2.replace('print(f"probekit: error: {escape(exc)}", file=sys.stderr)\n        return 2', 'print(f"probekit: error: {exc}", file=sys.stderr)\n        return 2'))
            tests = f"{M}::test_ansi_class_name_is_escaped_and_cannot_fake_the_message"
        env = {**os.environ, "PYTHONPATH": str(PATHS), "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "-p", "no:cacheprovider", *tests.split()],
                           cwd=MUT, env=env, capture_output=True, text=True, timeout=900)
        last = [line for line in r.stdout.splitlines() if any(w in line for w in ("passed", "failed", "error"))][-1:]
        print(f"{name}: rc={r.returncode} {last}", flush=True)
    finally:
        subprocess.run(["git", "checkout", "-q", "--", "."], cwd=MUT)
