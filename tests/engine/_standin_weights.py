"""The stand-in's weight-update endpoints (a mixin of `Standin`): sessions, the weight-sync group, received tensors.

As SGLang 0.5.23 (`srt/managers/scheduler_components/weight_updater.py`): a session is opened by
/begin_weight_update and closed by /end_weight_update; /update_weights_from_distributed outside one is
refused before the broadcast is joined. The group is joined as SGLang's tp ranks join theirs.
"""

from __future__ import annotations

from apr.engine.sglang.weights import new_update_group


class StandinWeights:
    """Needs `is_session_open`, `_groups`, `_submit_kind` and `engine` of `Standin`."""

    def _session(self, path: str) -> tuple[int, dict]:
        if (path == "/begin_weight_update") == self.is_session_open:
            message = ("begin_weight_update called while a weight-update session is already open"
                       if self.is_session_open else "end_weight_update called without begin_weight_update")
            return 400, {"success": False, "message": message}
        self.is_session_open = path == "/begin_weight_update"
        return 200, {"success": True, "message": "Success"}

    def _destroy_group(self, body: dict) -> tuple[int, dict]:
        import torch.distributed as dist

        group = self._groups.pop(body.get("group_name", "weight_update_group"), None)
        if group is None:
            return 400, {"success": False, "message": "The group to be destroyed does not exist."}
        dist.destroy_process_group(group)
        return 200, {"success": True, "message": "Succeeded to destroy custom process group."}

    def _join_group(self, body: dict) -> tuple[int, dict]:
        """Join the client's weight-sync group as rank `rank_offset` (this stand-in is one tp rank);
        blocks until every member joined, as SGLang's does."""
        try:
            self._groups[body["group_name"]] = new_update_group(
                body.get("backend", "nccl"), body["master_address"], int(body["master_port"]),
                int(body["world_size"]), int(body["rank_offset"]), body["group_name"], 60.0)
        except Exception as e:
            return 400, {"success": False, "message": f"Failed to initialize custom process group: {e}."}
        return 200, {"success": True, "message": "Succeeded to initialize custom process group."}

    def _receive(self, body: dict) -> tuple[int, dict | None]:
        """Receive the announced tensors from rank 0, then load them between engine steps."""
        import torch
        import torch.distributed as dist

        group = self._groups.get(body.get("group_name"))
        if group is None:
            return 400, {"success": False, "message": f"Group {body.get('group_name')} not in update groups."}
        tensors = {}
        for name, dtype, shape in zip(body["names"], body["dtypes"], body["shapes"]):
            t = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(t, src=0, group=group)
            tensors[name] = t
        return self._submit_kind("tensors", {**body, "tensors": tensors})

    def _load_tensors(self, tensors: dict) -> None:
        import torch

        params = dict(self.engine.model.named_parameters(remove_duplicate=False))  # tied names too
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise ValueError(f"unknown parameter names {unknown[:3]}")
        with torch.no_grad():
            for name, t in tensors.items():
                params[name].copy_(t)
