"""`distracer/CarRacingFast-v3`: Gymnasium's CarRacing-v3 with the same physics and bit-identical
96x96 observations, drawn several times faster.

Stock CarRacing spends almost all of a step drawing the 1000x800 window in Python and then shrinking it.
This subclass keeps every pixel the same and changes only how the work is done:

* Culling in numpy. A cheap, conservative test on polygon centres picks candidates; those are rotated,
  scaled and translated at once with the exact float operations pygame's `Vector2.rotate_rad` uses
  (tests check equality); the stock bounding-box test runs on them vectorised. Polygons it keeps that
  lie wholly outside the window (most of them: its margin is ~380 px) are skipped, as gfxdraw would
  set no pixel; the rest go to the stock `gfxdraw` calls, in stock order.
* No flip and a smaller shrink. `smoothscale` shrinks X (row by row) then Y, so the X pass over the
  unflipped window equals the flipped X pass with its rows reversed. The bottom 100 rows of the stock
  frame are the dashboard (black bar, indicators, score), drawn after the flip over the road; so the
  road rows under it are never shrunk, and the dashboard is drawn on its own 1000x100 strip. When an
  indicator would reach above the strip, the stock flip-and-draw path runs instead.
* Reuse. One canvas and a cache of rendered score texts replace per-frame allocations. When the
  background polygon provably covers the window, a fill with the pixel it writes replaces both the
  clear and gfxdraw's walk over its ~12,000 scanlines.

Rendering reads only the current state (car body, time, tile colours, score), so skipping frames
(`render_observations = False`, used by `ActionRepeat`) cannot change later frames. One catch: stock
step() draws before it takes the step's 0.1 off the score, so `observe()` draws with the score of that
moment, which it records when a step skips drawing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pygame
from gymnasium.envs.box2d.car_racing import (
    GRASS_DIM,
    MAX_SHAPE_DIM,
    PLAYFIELD,
    SCALE,
    STATE_H,
    STATE_W,
    WINDOW_H,
    WINDOW_W,
    ZOOM,
    CarRacing,
)
from pygame import gfxdraw

# Height of the dashboard strip at the bottom of the stock window: polygon [(W,H),(W,H-5h),(0,H-5h),(0,H)].
DASH_H = 5 * (WINDOW_H // 40)
ROAD_H = WINDOW_H - DASH_H
# The clear can be skipped only if the background polygon covers the window with this many pixels to spare,
# which absorbs gfxdraw's integer truncation of vertices and its scanline rounding.
COVER_MARGIN = 3.0
# Polygons whose bounding box is farther than this outside the window draw no pixel (see touches_window).
TOUCH_MARGIN = 3.0
# Half-diagonal, in pixels, of the window grown by TOUCH_MARGIN: how far from the window centre a touching
# point can be.
WINDOW_REACH = float(np.hypot(WINDOW_W / 2 + TOUCH_MARGIN, WINDOW_H / 2 + TOUCH_MARGIN))
# Rendered score strings are few ("%04i" of the return); the cap only guards against odd rewards.
TEXT_CACHE_SIZE = 4096


def grass_vertices() -> np.ndarray:
    """The stock grass squares, (400, 4, 2), built with the same float expressions and in the same order."""
    grass = []
    for x in range(-20, 20, 2):
        for y in range(-20, 20, 2):
            grass.append(
                [
                    (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + 0),
                    (GRASS_DIM * x + 0, GRASS_DIM * y + 0),
                    (GRASS_DIM * x + 0, GRASS_DIM * y + GRASS_DIM),
                    (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + GRASS_DIM),
                ]
            )
    return np.array(grass, dtype=np.float64)


def field_vertices() -> np.ndarray:
    """The stock background polygon (the whole playfield), (4, 2)."""
    b = PLAYFIELD
    return np.array([(b, b), (b, -b), (-b, -b), (-b, b)], dtype=np.float64)


def rotation(angle: float) -> tuple[float, float]:
    """(cos, sin) exactly as `Vector2.rotate_rad` uses them, including its exact 0/90/180/270 cases.

    Rotating (1, 0) gives (cos*1 - sin*0, sin*1 + cos*0) == (cos, sin) bit for bit.
    """
    c, s = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
    return c, s


def to_screen(xy: np.ndarray, cos_a: float, sin_a: float, zoom: float, trans: tuple[float, float]) -> np.ndarray:
    """World -> window coordinates for any (..., 2) array, the same float ops as stock, one at a time.

    Stock: `v = Vector2(p).rotate_rad(angle)` (cos*x - sin*y, sin*x + cos*y), then `v * zoom + trans`.
    Each numpy ufunc rounds once like the C expressions, so results are equal, not just close.
    """
    x, y = xy[..., 0], xy[..., 1]
    out = np.empty_like(xy)
    out[..., 0] = (cos_a * x - sin_a * y) * zoom + trans[0]
    out[..., 1] = (sin_a * x + cos_a * y) * zoom + trans[1]
    return out


def on_screen(screen_xy: np.ndarray) -> np.ndarray:
    """Stock `_draw_colored_polygon` clip test, vectorised: any vertex inside the window grown by MAX_SHAPE_DIM."""
    x, y = screen_xy[..., 0], screen_xy[..., 1]
    inside = (
        (x >= -MAX_SHAPE_DIM)
        & (x <= WINDOW_W + MAX_SHAPE_DIM)
        & (y >= -MAX_SHAPE_DIM)
        & (y <= WINDOW_H + MAX_SHAPE_DIM)
    )
    return inside.any(axis=-1)


def touches_window(screen_xy: np.ndarray) -> np.ndarray:
    """Whether each polygon's bounding box comes within TOUCH_MARGIN pixels of the window.

    The stock test keeps everything within MAX_SHAPE_DIM (~380 px) of the window, so most polygons it
    draws lie wholly outside, where gfxdraw still walks their scanlines but sets no pixel. gfxdraw
    rounds vertices to integers (< 1 px) and its anti-aliasing reaches 1 px past an edge; polygons
    farther out than that cannot change a pixel, so skipping them keeps the image.
    """
    lo = screen_xy.min(axis=-2)
    hi = screen_xy.max(axis=-2)
    return (
        (hi[..., 0] >= -TOUCH_MARGIN)
        & (lo[..., 0] <= WINDOW_W + TOUCH_MARGIN)
        & (hi[..., 1] >= -TOUCH_MARGIN)
        & (lo[..., 1] <= WINDOW_H + TOUCH_MARGIN)
    )


def covers_window(poly: np.ndarray) -> bool:
    """Whether a convex polygon (4, 2), as gfxdraw will truncate it, contains the window with a margin.

    Then its fill overwrites every pixel and its anti-aliased outline lies wholly outside, so the canvas
    needs no clearing first. Vertex order may be either winding.
    """
    pts = np.trunc(poly)
    corners = np.array(
        [
            (-COVER_MARGIN, -COVER_MARGIN),
            (WINDOW_W + COVER_MARGIN, -COVER_MARGIN),
            (WINDOW_W + COVER_MARGIN, WINDOW_H + COVER_MARGIN),
            (-COVER_MARGIN, WINDOW_H + COVER_MARGIN),
        ]
    )
    edges = np.roll(pts, -1, axis=0) - pts  # (4, 2)
    rel = corners[:, None, :] - pts[None, :, :]  # (corner, edge, 2)
    cross = edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0]
    return bool(np.all(cross > 0) or np.all(cross < 0))


def dashboard_polygons(env: CarRacing) -> list[tuple[list[tuple[float, float]], tuple[int, int, int]]]:
    """The stock `_render_indicators(WINDOW_W, WINDOW_H)` polygons in window coordinates, in drawing order.

    Same expressions as stock so the floats are identical; the first is the black bar.
    """
    W, H = WINDOW_W, WINDOW_H
    s = W / 40.0
    h = H / 40.0
    polys: list[tuple[list[tuple[float, float]], tuple[int, int, int]]] = [
        ([(W, H), (W, H - 5 * h), (0, H - 5 * h), (0, H)], (0, 0, 0))
    ]

    def vertical_ind(place: float, val: float) -> list[tuple[float, float]]:
        return [
            (place * s, H - (h + h * val)),
            ((place + 1) * s, H - (h + h * val)),
            ((place + 1) * s, H - h),
            ((place + 0) * s, H - h),
        ]

    def horiz_ind(place: float, val: float) -> list[tuple[float, float]]:
        return [
            ((place + 0) * s, H - 4 * h),
            ((place + val) * s, H - 4 * h),
            ((place + val) * s, H - 2 * h),
            ((place + 0) * s, H - 2 * h),
        ]

    def add_if_min(value: float, points: list[tuple[float, float]], color: tuple[int, int, int]) -> None:
        if abs(value) > 1e-4:
            polys.append((points, color))

    car = env.car
    assert car is not None
    true_speed = np.sqrt(np.square(car.hull.linearVelocity[0]) + np.square(car.hull.linearVelocity[1]))
    add_if_min(true_speed, vertical_ind(5, 0.02 * true_speed), (255, 255, 255))
    add_if_min(car.wheels[0].omega, vertical_ind(7, 0.01 * car.wheels[0].omega), (0, 0, 255))
    add_if_min(car.wheels[1].omega, vertical_ind(8, 0.01 * car.wheels[1].omega), (0, 0, 255))
    add_if_min(car.wheels[2].omega, vertical_ind(9, 0.01 * car.wheels[2].omega), (51, 0, 255))
    add_if_min(car.wheels[3].omega, vertical_ind(10, 0.01 * car.wheels[3].omega), (51, 0, 255))
    add_if_min(car.wheels[0].joint.angle, horiz_ind(20, -10.0 * car.wheels[0].joint.angle), (0, 255, 0))
    add_if_min(car.hull.angularVelocity, horiz_ind(30, -0.8 * car.hull.angularVelocity), (255, 0, 0))
    return polys


def fits_strip(polys: list[tuple[list[tuple[float, float]], Any]], text_rect: pygame.Rect) -> bool:
    """Whether drawing the dashboard on a strip shifted up by ROAD_H gives the stock pixels.

    Nothing may reach above the strip (stock would draw over the road there), and every y must lie in
    [ROAD_H/2, 2*ROAD_H] so that `y - ROAD_H` is exact (Sterbenz) and rounds like `y` shifted.
    """
    if text_rect.top < ROAD_H:
        return False
    return all(ROAD_H <= y <= 2 * ROAD_H for points, _ in polys for _, y in points)


class FastCarRacing(CarRacing):
    """CarRacing with identical dynamics, rewards and observations, and a faster state_pixels renderer.

    Attributes:
        render_observations: when False, `step()` skips drawing and returns the previous observation;
            `observe()` draws the current one. `ActionRepeat` uses this to draw only returned frames.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.render_observations = True
        self._grass_xy = grass_vertices()
        self._field_xy = field_vertices()
        # Built lazily per track: every drawable polygon (grass then road) and the road colours.
        self._poly_source: list | None = None
        self._poly_xy: np.ndarray | None = None
        self._road_colors: list = []
        self._centers = np.empty((0, 2))
        self._radii = np.empty(0)
        self._canvas: pygame.Surface | None = None
        self._strip: pygame.Surface | None = None
        self._road_x: pygame.Surface | None = None
        self._strip_x: pygame.Surface | None = None
        self._tall: pygame.Surface | None = None
        self._small: pygame.Surface | None = None
        self._texts: dict[str, pygame.Surface] = {}
        self._bg_key: tuple | None = None
        self._bg_value = 0
        # The score the last step() drew (or would have drawn) on the dashboard; see observe().
        self._frame_reward = 0.0

    # ---- gymnasium API ------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # reset() always returns a drawn frame, whatever the last ActionRepeat step left behind.
        self.render_observations = True
        return super().reset(seed=seed, options=options)

    def observe(self) -> np.ndarray:
        """Draw the observation the last step would have returned, store it as `self.state`, return it.

        Stock step() draws before it subtracts the step's 0.1 from the score shown on the dashboard, so
        this draws with the score as it was at that moment, not the current `self.reward`.
        """
        self.state = self._render_state_pixels(self._frame_reward)
        return self.state

    def render(self):
        # render_mode="state_pixels": draw now, with the current score, whatever the last step skipped.
        if self.render_mode == "state_pixels":
            return self._render_state_pixels(self.reward)
        return super().render()

    def _render(self, mode: str):
        # Stock step() calls _render("state_pixels"); other modes (human, rgb_array) stay stock.
        if mode != "state_pixels":
            return super()._render(mode)
        self._frame_reward = self.reward
        if not self.render_observations and hasattr(self, "state"):
            return self.state
        return self._render_state_pixels(self._frame_reward)

    # ---- drawing ------------------------------------------------------------------------------------

    def _render_state_pixels(self, score: float) -> np.ndarray | None:
        pygame.font.init()
        if self.clock is None:
            self.clock = pygame.time.Clock()
        if "t" not in self.__dict__:
            return None  # reset() not called yet, as stock
        self._ensure_buffers()
        zoom, trans, angle = self._camera()
        canvas = self._canvas
        self._draw_road(canvas, zoom, trans, angle)
        self.car.draw(canvas, zoom, trans, angle, False)

        polys = dashboard_polygons(self)
        text = self._score_text(score)
        text_rect = text.get_rect()
        text_rect.center = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)
        if fits_strip(polys, text_rect):
            return self._compose_with_strip(canvas, polys, text, text_rect)
        return self._compose_stock(canvas, polys, text, text_rect)

    def _ensure_buffers(self) -> None:
        if self._canvas is not None:
            return
        # Same constructor as stock, so the same pixel format, which smoothscale's byte arithmetic sees.
        self._canvas = pygame.Surface((WINDOW_W, WINDOW_H))
        self._strip = pygame.Surface((WINDOW_W, DASH_H))
        self._road_x = pygame.Surface((STATE_W, ROAD_H))
        self._strip_x = pygame.Surface((STATE_W, DASH_H))
        self._tall = pygame.Surface((STATE_W, WINDOW_H))
        self._small = pygame.Surface((STATE_W, STATE_H))

    def _camera(self) -> tuple[float, tuple[float, float], float]:
        """Stock camera: zoom, translation and angle, with the stock expressions."""
        angle = -self.car.hull.angle
        zoom = 0.1 * SCALE * max(1 - self.t, 0) + ZOOM * SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (WINDOW_W / 2 + trans[0], WINDOW_H / 4 + trans[1])
        return zoom, trans, angle

    def _polygons(self) -> np.ndarray:
        """All grass squares then all road polygons, (400 + N, 4, 2); rebuilt when the track changes."""
        road_poly = self.road_poly
        if self._poly_source is not road_poly or len(self._poly_xy) != len(self._grass_xy) + len(road_poly):
            road_xy = np.array([poly for poly, _ in road_poly], dtype=np.float64).reshape(-1, 4, 2)
            self._poly_xy = np.concatenate([self._grass_xy, road_xy])
            self._centers = self._poly_xy.mean(axis=1)
            self._radii = np.linalg.norm(self._poly_xy - self._centers[:, None, :], axis=-1).max(axis=1)
            # Tile colours are numpy arrays the contact listener recolours in place: keep references,
            # read them at draw time.
            self._road_colors = [color for _, color in road_poly]
            self._poly_source = road_poly
        return self._poly_xy

    def _candidates(self, cos_a: float, sin_a: float, zoom: float, trans: tuple[float, float]) -> np.ndarray:
        """Indices (ascending, so stock order) of the polygons that may touch the window: a cheap,
        conservative pre-cull on polygon centres before the exact per-vertex tests.

        A polygon of circumradius r (world) has its screen bounding box within r*zoom*sqrt(2) of its
        centre; if that box comes within TOUCH_MARGIN of the window, the centre lies within
        WINDOW_REACH/zoom + r*sqrt(2) of the window centre, in world units. The slack absorbs rounding.
        """
        self._polygons()
        dx, dy = WINDOW_W / 2 - trans[0], WINDOW_H / 2 - trans[1]
        # Window centre in world coordinates: the inverse rotation (transpose) of the screen offset.
        cx = (cos_a * dx + sin_a * dy) / zoom
        cy = (-sin_a * dx + cos_a * dy) / zoom
        reach = (WINDOW_REACH / zoom + self._radii * np.sqrt(2.0)) * 1.01 + 1.0
        d2 = np.square(self._centers[:, 0] - cx) + np.square(self._centers[:, 1] - cy)
        return np.flatnonzero(d2 <= np.square(reach))

    def _draw_road(self, surf: pygame.Surface, zoom: float, trans: tuple[float, float], angle: float) -> None:
        """Stock `_render_road` on a reused canvas: background, visible grass, visible road, stock order."""
        cos_a, sin_a = rotation(angle)
        field = to_screen(self._field_xy, cos_a, sin_a, zoom, trans)
        if covers_window(field):
            # gfxdraw walks every scanline of the huge field polygon (~12000 at full zoom) although only
            # 800 are visible; a fill with the pixel it would write is the same image, 3x cheaper.
            surf.fill(self._bg_pixel())
        else:
            surf.fill((0, 0, 0))  # stock starts from a new, black surface
            field_pts = field.tolist()
            gfxdraw.aapolygon(surf, field_pts, self.bg_color)
            gfxdraw.filled_polygon(surf, field_pts, self.bg_color)

        candidates = self._candidates(cos_a, sin_a, zoom, trans)
        screen = to_screen(self._poly_xy[candidates], cos_a, sin_a, zoom, trans)
        keep = on_screen(screen) & touches_window(screen)
        n_grass = len(self._grass_xy)
        grass_color = self.grass_color
        road_colors = self._road_colors
        for i, pts in zip(candidates[keep].tolist(), screen[keep].tolist()):
            if i < n_grass:
                color = grass_color
            else:
                color = [int(c) for c in road_colors[i - n_grass]]
            gfxdraw.aapolygon(surf, pts, color)
            gfxdraw.filled_polygon(surf, pts, color)

    def _bg_pixel(self) -> int:
        """The raw pixel gfxdraw writes for `bg_color`, probed once per colour on a small black surface.

        Probing avoids assuming how gfxdraw converts colours (domain randomisation gives float colours).
        """
        key = tuple(np.asarray(self.bg_color).tolist())
        if self._bg_key != key:
            probe = pygame.Surface((4, 4))
            gfxdraw.filled_polygon(probe, [(-8, -8), (12, -8), (12, 12), (-8, 12)], self.bg_color)
            self._bg_value = int(pygame.surfarray.pixels2d(probe)[2, 2])
            self._bg_key = key
        return self._bg_value

    def _score_text(self, score: float) -> pygame.Surface:
        """The stock score text; rendering depends only on the string, so each string is rendered once."""
        label = "%04i" % score  # noqa: UP031 - the stock expression, so the same text
        text = self._texts.get(label)
        if text is None:
            if len(self._texts) >= TEXT_CACHE_SIZE:
                self._texts.clear()
            # A new Font per miss, as stock makes one per frame: a cached Font would dangle after any
            # pygame.quit() (a human-mode env's close()), while rendered Surfaces stay valid.
            font = pygame.font.Font(pygame.font.get_default_font(), 42)
            text = font.render(label, True, (255, 255, 255), (0, 0, 0))
            self._texts[label] = text
        return text

    def _compose_with_strip(
        self,
        canvas: pygame.Surface,
        polys: list,
        text: pygame.Surface,
        text_rect: pygame.Rect,
    ) -> np.ndarray:
        """Shrink the unflipped road rows and the separately drawn dashboard, then stack and shrink Y.

        smoothscale does X then Y, each X row independently, so this equals stock's flip + draw + shrink.
        """
        strip = self._strip
        for points, color in polys:
            pygame.draw.polygon(strip, color=color, points=[(x, y - ROAD_H) for x, y in points])
        strip.blit(text, text_rect.move(0, -ROAD_H))

        # Canvas rows DASH_H.. become flipped rows ..ROAD_H-1; canvas rows 0..DASH_H-1 lie under the dashboard.
        road = canvas.subsurface((0, DASH_H, WINDOW_W, ROAD_H))
        pygame.transform.smoothscale(road, (STATE_W, ROAD_H), self._road_x)
        pygame.transform.smoothscale(strip, (STATE_W, DASH_H), self._strip_x)
        tall = pygame.surfarray.pixels2d(self._tall)
        tall[:, :ROAD_H] = pygame.surfarray.pixels2d(self._road_x)[:, ::-1]
        tall[:, ROAD_H:] = pygame.surfarray.pixels2d(self._strip_x)
        del tall  # release the surface lock before smoothscale reads it
        pygame.transform.smoothscale(self._tall, (STATE_W, STATE_H), self._small)
        return self._image_array(self._small)

    def _compose_stock(
        self,
        canvas: pygame.Surface,
        polys: list,
        text: pygame.Surface,
        text_rect: pygame.Rect,
    ) -> np.ndarray:
        """The stock flip, full-size dashboard and shrink, for frames whose indicators leave the strip."""
        surf = pygame.transform.flip(canvas, False, True)
        for points, color in polys:
            pygame.draw.polygon(surf, color=color, points=points)
        surf.blit(text, text_rect)
        return self._image_array(pygame.transform.smoothscale(surf, (STATE_W, STATE_H)))

    @staticmethod
    def _image_array(surface: pygame.Surface) -> np.ndarray:
        # Same construction as stock `_create_image_array`: a fresh (H, W, 3) array, transposed view.
        return np.transpose(np.array(pygame.surfarray.pixels3d(surface)), axes=(1, 0, 2))
