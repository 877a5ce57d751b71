"""Image routes: slices for the viewer, zoomed crops for finding cards, whole-slice overlays.

Images are found through the index by id (``storage.admin_images``), rendered on the server
and cached by the browser: each answer carries an ETag built from the file's sha256 and the
rendering parameters (a matching ``If-None-Match`` gets 304 without rendering), and the page
puts the sha256 in the URL, so a replaced instance gets a new URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from admin import crops, images
from admin.auth import CurrentUser
from admin.context import ReportContext
from admin.forms import ImageQuery, InstanceId, RegionId, StudyId
from storage import admin_images
from storage.admin_images import SliceFile
from storage.models import Region

# Window presets (centre, width in HU) the viewer offers for CT.
WINDOWS = {
    "lung": (-600.0, 1500.0),
    "soft": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
SLICE_CACHE = "private, max-age=86400"
REGION_CACHE = "private, max-age=604800, immutable"  # regions and heatmaps never change


def _cached(request: Request, etag: str, cache: str) -> Response | None:
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    return None


def _png(body: bytes, etag: str, cache: str) -> Response:
    return Response(body, media_type="image/png", headers={"ETag": etag, "Cache-Control": cache})


def slice_router(ctx: ReportContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    viewer = Depends(ctx.auth.viewer)

    @router.get("/studies/{study_id}/instances/{instance_id}.png")
    def instance_png(
        request: Request,
        study_id: StudyId,
        instance_id: InstanceId,
        query: Annotated[ImageQuery, Query()],
        user: CurrentUser = viewer,
    ) -> Response:
        with ctx.db.reading() as session:
            found = admin_images.instance_file(session, study_id, instance_id)
            overlay = (
                admin_images.slice_overlay(session, study_id, instance_id)
                if found is not None and query.overlay
                else None
            )
        if found is None:
            return JSONResponse({"detail": "no such slice in this study"}, status_code=404)
        window = WINDOWS.get(query.window) if found.modality == "CT" else None
        tag = overlay.tag if overlay is not None else "plain"
        etag = f'"{found.sha256[:20]}-{query.size}-{query.window}-{tag}"'
        cache = "private, no-cache" if overlay is not None else SLICE_CACHE
        if (hit := _cached(request, etag, cache)) is not None:
            return hit
        path = ctx.instance_root / found.path
        try:
            if overlay is not None:
                circles = [(x, y, r, images.FLAGGED_COLOUR) for x, y, r in overlay.flagged]
                circles += [(x, y, r, images.CHECKED_COLOUR) for x, y, r in overlay.checked]
                circles += [(x, y, r, images.ADMIN_COLOUR) for x, y, r in overlay.requested]
                body = images.overlay_png(path, found.modality, circles)
            else:
                body = images.slice_png(path, found.modality, query.size, window)
        except images.ImageError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return _png(body, etag, cache)

    def _region(region_id: int) -> tuple[Region, SliceFile, Path | None] | None:
        with ctx.db.reading() as session:
            found = admin_images.region_with_file(session, region_id)
        if found is None:
            return None
        region, file = found
        heatmap = None
        if region.heatmap_path:
            candidate = (ctx.data_dir / region.heatmap_path).resolve()
            if candidate.is_relative_to((ctx.data_dir / "heatmaps").resolve()):
                heatmap = candidate
        return region, file, heatmap

    @router.get("/regions/{region_id}/crop.png")
    def region_crop(
        request: Request,
        region_id: RegionId,
        user: CurrentUser = viewer,
        heat: bool = True,
        size: Annotated[int, Query(ge=64, le=512)] = 192,
    ) -> Response:
        """The region enlarged, with (``heat=true``) or without its heatmap."""
        found = _region(region_id)
        if found is None:
            return JSONResponse({"detail": "no such region"}, status_code=404)
        region, file, heatmap = found
        etag = f'"r{region.id}-{file.sha256[:20]}-{int(heat)}-{size}"'
        if (hit := _cached(request, etag, REGION_CACHE)) is not None:
            return hit
        try:
            body = crops.crop_png(
                ctx.instance_root / file.path,
                file.modality,
                region.x,
                region.y,
                region.radius_px or 8.0,
                heatmap,
                size,
                heat,
            )
        except images.ImageError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return _png(body, etag, REGION_CACHE)

    @router.get("/regions/{region_id}.png")
    def region_png(
        request: Request,
        region_id: RegionId,
        user: CurrentUser = viewer,
        scale: Annotated[int, Query(ge=1, le=4)] = 2,
    ) -> Response:
        """The whole slice with the region's heatmap and circle (the crop is lighter)."""
        found = _region(region_id)
        if found is None:
            return JSONResponse({"detail": "no such region"}, status_code=404)
        region, file, heatmap = found
        etag = f'"r{region.id}-{file.sha256[:20]}-full-{scale}"'
        if (hit := _cached(request, etag, REGION_CACHE)) is not None:
            return hit
        colour = images.FLAGGED_COLOUR if region.flagged else images.CHECKED_COLOUR
        if region.source == "admin" and not region.flagged:
            colour = images.ADMIN_COLOUR
        try:
            body = images.overlay_png(
                ctx.instance_root / file.path,
                file.modality,
                [(region.x, region.y, region.radius_px or 8.0, colour)],
                heatmap,
                (region.x, region.y),
                scale,
            )
        except images.ImageError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return _png(body, etag, REGION_CACHE)

    return router
