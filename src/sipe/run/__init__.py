"""``sipe run``: one resumable command from a folder of tagged photos to a tested model, an ONNX file and a
results page. :class:`Pipeline` is the orchestrator; :class:`RunConfig` the configuration (``sipe demo`` is
``configs/demo.yaml``, :data:`DEMO_CONFIG`); :func:`run_pipeline` the whole run."""

from sipe._lazy import lazy_exports

_EXPORTS = {
    "Pipeline": "sipe.run.pipeline",
    "RunConfigChanged": "sipe.run.pipeline",
    "Stage": "sipe.run.pipeline",
    "DEMO_CONFIG": "sipe.run.config",
    "RunConfig": "sipe.run.config",
    "resolve": "sipe.run.config",
    "RunData": "sipe.run.data",
    "run_data": "sipe.run.data",
    "build_run_pipeline": "sipe.run.stages",
    "run_pipeline": "sipe.run.stages",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
