"""The OPC UA VisionSystem's methods (edge/opcua.py VisionServer): what a named client (edge/opcua_access.py) may
do to the line, each call and its outcome an `opcua` line in the events.

- RecipeManagement/PrepareRecipe(ExternalId.Id = a .tflite path, sidecar beside it; ExternalId.Hash optional: its
  sha256): a recipe is a model file and its decision config (its sidecar's reject block with the running config's
  [bins] and [decision]); the checks edge/model.py makes at start and those of a promotion (edge/promotion.py).
  Answers InternalIdOut.Id = the sha256, IsCompleted, Error (0 ok, 1 the model or sidecar fails its checks, 2 it
  does not fit the running config or has other labels than the live model, 3 the hash differs); the reason is in
  RecipeManagement/LastProblem.
- AutomaticModeStateMachine/Stop: Ready, a pause (Sorter.pause): frames are still read and counted skipped
  `paused`, nothing is decided, no new valve fires. Accepted in any state until the run ends (the empty belt being
  learned too: its learning waits); Error 4 after a Halt or the end.
- StartContinuous: ContinuousExecution (Sorter.resume), from Ready or while sorting; with a prepared RecipeId
  other than the live model it first swaps the model between frames (Sorter.promote: the same checks again, the
  old model kept for rollback). Error 4 (REFUSED) when the recipe was not prepared, the swap is refused or the
  run has ended; the state is then unchanged.
- StartSingleJob (same arguments), from Ready only (else BadInvalidState): SingleExecution until the next frame
  that has particles is decided (single items: the next picture; Sorter.single_job), then Ready again.
- VisionStateMachine/Halt: ends the run after the current frame (the summary's exit names it), then Halted.

A method that changes the state writes it before it returns, so a client reads the new state at once.
"""

import asyncio

PREPARE_ERRORS = {"model": 1, "config": 2, "hash": 3}
REFUSED = 4  # a Start or Stop method's Error: the recipe is not prepared, the swap is refused or the run has ended


class VisionMethods:
    """The method handlers, linked to the NodeSet2's method nodes by `_link_methods`: a mixin of VisionServer, whose
    runner, prepared recipes, LastProblem node, `vision_state()` and state writers they use."""

    async def _link_methods(self, server):
        mv = self.mv
        for parent, name, handler in ((self.recipes, "PrepareRecipe", self._prepare_recipe),
                                      (self.automatic, "StartContinuous", self._start_continuous),
                                      (self.automatic, "StartSingleJob", self._start_single_job),
                                      (self.automatic, "Stop", self._stop),
                                      (self.machine, "Halt", self._halt)):
            server.link_method(await parent.get_child(f"{mv}:{name}"), handler)

    async def _prepare_recipe(self, parent, external, internal):
        from asyncua import ua

        path = getattr(external.Value, "Id", None) or ""
        wanted = getattr(external.Value, "Hash", None)
        kind, detail = await asyncio.get_running_loop().run_in_executor(None, self._check_recipe, path, wanted)
        await self.last_problem.write_value(detail if kind else "")
        self.runner.events.emit("opcua", event="prepare_recipe", model=path, ok=not kind, problem=detail or None)
        sha = self.prepared.get(path, "")
        return [ua.Variant(ua.RecipeIdInternalDataType(Id=sha, Description=ua.LocalizedText(path))),
                ua.Variant(True, ua.VariantType.Boolean),
                ua.Variant(PREPARE_ERRORS.get(kind, 0), ua.VariantType.Int32)]

    def _check_recipe(self, path, wanted_hash):
        """(None, None) when the model at `path` could replace the live one (edge/promotion.py), else (kind, why)."""
        from edge.model import Model, ModelError
        from edge.promotion import candidate_problem

        try:
            model = Model(path)
        except (ModelError, OSError) as error:
            return "model", f"recipe '{path}': {error}"
        if wanted_hash and bytes(wanted_hash) != bytes.fromhex(model.sha256):
            return "hash", f"recipe '{path}' has sha256 {model.sha256}, not the recipe's Hash: pass the right file."
        problem = candidate_problem(self.runner.model, model, self.runner.config)
        if problem:
            return "config", f"recipe '{path}' {problem}."
        self.prepared[path] = model.sha256
        return None, None

    async def _start_continuous(self, parent, meas, part, recipe, product, parameters):
        """Sort on (from Ready: resume, Sorter.resume); with a prepared recipe other than the live model, swap to it
        between frames first."""
        from asyncua import ua

        path = getattr(recipe.Value, "Id", None) or ""
        error, problem = await self._use_recipe(path)
        if not error:
            self.runner.resume("opcua StartContinuous")
        await self._show_state()
        self.runner.events.emit("opcua", event="start_continuous", recipe=path or None, error=error, problem=problem)
        return [ua.Variant(ua.JobIdDataType(Id=self.job)), ua.Variant(error, ua.VariantType.Int32)]

    async def _start_single_job(self, parent, meas, part, recipe, product, parameters):
        """From Ready only (else BadInvalidState): decide the next frame that has particles (Sorter.single_job),
        showing SingleExecution until it is decided, then Ready again; a recipe is swapped in first as by
        StartContinuous."""
        from asyncua import ua

        path = getattr(recipe.Value, "Id", None) or ""
        if self.vision_state() != ("Operational", "Ready"):
            self.runner.events.emit("opcua", event="start_single_job", recipe=path or None, error="BadInvalidState",
                                    problem="not Ready: call Stop first")
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        error, problem = await self._use_recipe(path)
        if not error:
            self.runner.single_job()
        await self._show_state()
        self.runner.events.emit("opcua", event="start_single_job", recipe=path or None, error=error, problem=problem)
        return [ua.Variant(ua.JobIdDataType(Id=self.job)), ua.Variant(error, ua.VariantType.Int32)]

    async def _use_recipe(self, path):
        """(0, None) when the recipe `path` (empty: the live model) is the live model, swapped in between frames if
        need be; else (REFUSED, why), also in LastProblem."""
        from edge.model import ModelError

        error, problem = 0, None
        if self.runner.finished or self._stopping:
            error, problem = REFUSED, "the run has ended: only a restart of the runner starts another"
        elif path and self.prepared.get(path) is None and path != self.runner.model.path:
            error, problem = REFUSED, f"recipe '{path}' was not prepared: call PrepareRecipe first"
        elif path and path != self.runner.model.path:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.runner.promote, path)
            except ModelError as refused:
                error, problem = REFUSED, str(refused)
            await self._show_model()
        await self.last_problem.write_value(problem or "")
        return error, problem

    async def _stop(self, parent, cause, description):
        """Pause (Sorter.pause): Ready, frames read and counted, nothing decided; StartContinuous sorts again."""
        from asyncua import ua

        text = getattr(description.Value, "Text", None) or ""
        error = REFUSED if self.runner.finished or self._stopping else 0
        if not error:
            self.runner.pause("opcua Stop" + (f": {text}" if text else ""))
        await self._show_state()
        self.runner.events.emit("opcua", event="stop", cause=cause.Value, description=text or None, error=error)
        return [ua.Variant(error, ua.VariantType.Int32)]

    async def _halt(self, parent, cause, description):
        """End the run after the current frame (Sorter.stop): Halted, then the server closes with the runner."""
        from asyncua import ua

        text = getattr(description.Value, "Text", None) or ""
        self._stopping = True
        self.runner.stop("opcua Halt" + (f": {text}" if text else ""))
        await self._show_state()
        self.runner.events.emit("opcua", event="halt", cause=cause.Value, description=text or None)
        return [ua.Variant(0, ua.VariantType.Int32)]
