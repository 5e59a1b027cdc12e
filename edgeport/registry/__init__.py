"""Everything about talking to MLflow, in one core package (imports MLflow; never tasks or flows).

======================  ==========================================================================
module                  what it holds
======================  ==========================================================================
:mod:`.uri`             tracking-URI resolution and redaction, artifact-location policy, the
                        process-global store of MLflow's fluent API (:func:`using_store`)
:mod:`.errors`          one translation of MLflow's errors (:func:`map_mlflow_errors`),
                        transient-error classification (:func:`is_transient`)
:mod:`.retry`           the one retry policy of MLflow steps (:func:`with_retry_window`)
:mod:`.client`          HTTP settings, health check, client set-up, the experiment
:mod:`.params`          params / metric keys / finite numbers as MLflow logs them
:mod:`.tags`            the tags register writes and promote reads
:mod:`.pending`         the pending-registration file of an output folder
:mod:`.identity`        when a variant is an existing model version (idempotent registration;
                        imports the spec: import it explicitly, it is not re-exported here)
:mod:`.signature`       ONNX input example, signature, ``log_model`` (imports onnx and
                        onnxruntime: import it explicitly, it is not re-exported here)
======================  ==========================================================================
"""

from edgeport.registry.client import (
    alias_version,
    check_tracking_uri,
    ensure_experiment,
    mlflow_http_settings,
    registered_model_exists,
    registry_client,
    set_alias,
    version_exists,
)
from edgeport.registry.errors import (
    first_line,
    is_not_found,
    is_transient,
    map_mlflow_errors,
    mlflow_error,
)
from edgeport.registry.params import (
    BENCHMARK_METRICS,
    finite,
    flatten_params,
    git_commit,
    jsonable,
    metric_key,
    variant_metrics,
)
from edgeport.registry.pending import (
    PENDING_FILE,
    clear_pending_registration,
    read_pending_registration,
    write_pending_registration,
)
from edgeport.registry.retry import (
    DEFAULT_RETRY,
    INTERACTIVE_RETRY,
    PREFECT_MAX_RETRY_DELAYS,
    prefect_retry_options,
    retry_delays,
    retry_if_transient,
    retry_transient_within,
    with_retry_window,
)
from edgeport.registry.tags import (
    LOGGED_PROVIDERS_TAG,
    LOGGED_TARGET_TAG,
    RANKED_BATCH_SIZE_TAG,
    RANKED_TARGET_TAG,
    REGISTRATION_TAG,
    TARGET_ALIASES_BEFORE_TAG,
    WON_TARGETS_TAG,
    parent_run_tags,
    ranked_on,
    ranked_tags,
    target_alias,
    variant_run_tags,
    won_tags,
)
from edgeport.registry.uri import (
    artifact_location_for,
    is_http,
    redact_uri,
    resolve_tracking_uri,
    run_url,
    safe_name,
    sqlite_db_path,
    using_store,
)

__all__ = [
    "BENCHMARK_METRICS",
    "DEFAULT_RETRY",
    "INTERACTIVE_RETRY",
    "LOGGED_PROVIDERS_TAG",
    "LOGGED_TARGET_TAG",
    "PENDING_FILE",
    "PREFECT_MAX_RETRY_DELAYS",
    "RANKED_BATCH_SIZE_TAG",
    "RANKED_TARGET_TAG",
    "REGISTRATION_TAG",
    "TARGET_ALIASES_BEFORE_TAG",
    "WON_TARGETS_TAG",
    "alias_version",
    "artifact_location_for",
    "check_tracking_uri",
    "clear_pending_registration",
    "ensure_experiment",
    "finite",
    "first_line",
    "flatten_params",
    "git_commit",
    "is_http",
    "is_not_found",
    "is_transient",
    "jsonable",
    "map_mlflow_errors",
    "metric_key",
    "mlflow_error",
    "mlflow_http_settings",
    "parent_run_tags",
    "prefect_retry_options",
    "ranked_on",
    "ranked_tags",
    "read_pending_registration",
    "redact_uri",
    "registered_model_exists",
    "registry_client",
    "resolve_tracking_uri",
    "retry_delays",
    "retry_if_transient",
    "retry_transient_within",
    "run_url",
    "safe_name",
    "set_alias",
    "sqlite_db_path",
    "target_alias",
    "using_store",
    "variant_metrics",
    "variant_run_tags",
    "version_exists",
    "with_retry_window",
    "won_tags",
    "write_pending_registration",
]
