"""The admin status page: one self-contained HTML document served at ``/`` on the admin listener.

The page carries everything it needs inline (CSS, JS, and an SVG world map) and talks to
nothing but ``GET /status`` on its own origin, every ``REFRESH_MS``. It draws each region as a
circle on an equirectangular map (colour = state, radius = in-flight requests, dashed = standby),
recent spill flows as curved arrows, and tables of regions and endpoints.

Data from ``/status`` is treated as untrusted: the script builds every node with
``createElement``/``createElementNS`` and ``textContent``, never ``innerHTML``, and a
Content-Security-Policy (in a ``<meta>`` tag, and as a header from ``handle_status_page``) pins
the inline script and style by hash and allows network access only to the page's own origin.

The land is a hand-simplified set of coastlines (a few dozen points per landmass, longitude and
latitude in degrees): recognisable as a world map, not accurate.
"""

from __future__ import annotations

import base64
import hashlib
import json

from aiohttp import web

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "STATUS_PAGE",
    "handle_status_page",
    "land_paths",
    "project",
    "render_status_page",
]

MAP_WIDTH = 1000.0  # SVG user units for 360 degrees of longitude
MAP_HEIGHT = 500.0  # and for 180 degrees of latitude
LAT_TOP = 84.0  # the part of the map that is shown: no one runs GPUs on the ice caps
LAT_BOTTOM = -58.0
REFRESH_MS = 2000

# Coarse coastlines as "lon,lat lon,lat ..." strings, one closed ring each.
_LAND: dict[str, str] = {
    "north-america": (
        "-166,68.5 -156.5,71.3 -141,69.7 -128,70.2 -117,68.9 -108,68.2 -98,67.8 -94,69.2 "
        "-90,68.5 -86,67 -88,64.2 -90.7,63.3 -94.2,58.8 -92.4,57 -87,55.6 -82.2,55.1 -80.5,51.4 "
        "-79,54.5 -76.9,57.6 -77.6,60.5 -78,62.4 -72,61.8 -69.5,59 -65,60.3 -61.8,57.2 "
        "-59.8,55.2 -56,52.3 -59.5,50 -64.5,49.6 -66.5,50 -71,46.9 -64.6,48.8 -64.8,47 -61,45.7 "
        "-61.2,45.2 -65.8,43.7 -67,45 -70.2,43.7 -70.6,41.6 -74,40.6 -75.6,38.5 -76.2,36.9 "
        "-75.5,35.2 -77.9,33.9 -81.1,31.7 -80,27 -80.4,25.2 -81.8,26.2 -82.7,28.1 -83.3,29.6 "
        "-85.4,29.8 -89,30.4 -90.1,29 -94.7,29.4 -97.3,27.7 -97.6,24.7 -97.3,21.8 -96,19.2 "
        "-94.5,18.2 -91.4,18.5 -90.4,21 -87.3,21.5 -87.8,18.3 -88.3,15.9 -84.3,15.8 -83.2,14.9 "
        "-83.7,11.3 -81.4,8.7 -79.5,9.6 -77.4,8.6 -78.1,7.6 -80.3,7.4 -81.7,8.1 -85.7,10 "
        "-87.4,13 -91.4,13.9 -94,16.1 -96.5,15.7 -101.2,17.4 -105.3,20.4 -105.4,22.8 -108.9,25.5 "
        "-112.2,29.2 -114.7,31.7 -113.1,28.2 -111.2,25.9 -109.4,23.2 -110.3,23.4 -112.1,24.8 "
        "-114,27.8 -115.8,29.9 -117.1,32.5 -118.5,34 -120.6,34.6 -122.5,37.6 -124.2,40.4 "
        "-124,46.3 -124.7,48.4 -123,49.1 -127.9,50.9 -130.2,54.3 -133,56.5 -136.6,58.5 -139.8,59.7 "
        "-146.7,60.9 -151.5,59.2 -154.2,57.6 -158.2,56 -163.5,54.8 -161.1,56.3 -157.5,58.8 "
        "-162,59.9 -165,62.4 -161.5,63.8 -168,65.6 -162.2,66.2 -166,68.5"
    ),
    "baffin-island": (
        "-90,72 -85.5,73.6 -78,73.8 -71.5,71.5 -67.5,70 -61.9,66.9 -64.5,64.6 -65.5,62.6 "
        "-71.5,63.4 -74,64.5 -78,64.6 -75.5,66.5 -72.8,67.4 -78,70 -84.5,69.9"
    ),
    "victoria-island": (
        "-125.5,71.9 -124,74.3 -117,74.4 -113,73.2 -105,73.4 -101.5,70.8 -104.5,69.8 "
        "-109,69.9 -114,70.1 -118,70.7 -122,71.1"
    ),
    "ellesmere-island": (
        "-120,76.3 -110,78.5 -100,79.2 -90,81.3 -75,83 -62,82.5 -68,80.5 -75,78.6 -80,76.8 "
        "-90,76.4 -97,75.6 -105,75.6 -114,75.7"
    ),
    "greenland": (
        "-73,78.2 -66,80.8 -57,82.2 -42,83.6 -24,83.4 -18.5,81.6 -19.6,77.5 -21.6,73.4 "
        "-22,70.4 -26.7,68.3 -33,66.6 -40,65 -43,60 -45.3,60.4 -48.2,61.7 -51.5,64.5 -53.4,66.5 "
        "-54,69.6 -55.3,71.6 -56.7,74.6 -60.5,75.9 -67,76.1 -72,77.2"
    ),
    "iceland": "-24.2,65.5 -22,66.4 -16.2,66.5 -13.6,65.1 -18.6,63.4 -22.6,63.8",
    "cuba": "-84.9,21.9 -82,23.1 -77.5,21.8 -74.2,20.2 -77.7,19.9 -80.4,21.7 -82.5,22.2",
    "hispaniola": "-74.4,19.8 -72.7,19.9 -68.4,18.6 -71,18 -74.4,18.4",
    "south-america": (
        "-77.4,8.6 -75.6,10.6 -72,12.3 -71.3,10.8 -67,10.6 -62.3,10.7 -60.7,8.6 -57.2,6 "
        "-53.5,5.6 -51,4 -50,1.7 -48.5,-1.1 -44.3,-2.5 -40.2,-2.9 -37.1,-4.9 -35.2,-5.6 "
        "-35.1,-8.9 -37.5,-12.4 -39,-13.6 -39.2,-17.8 -40.9,-21.9 -42,-23 -44.8,-23.4 "
        "-48.5,-26.1 -48.7,-28.5 -51.2,-31.5 -53.5,-34 -55.1,-34.9 -58.4,-34.5 -57.4,-36.4 "
        "-57.7,-38.3 -62.2,-38.9 -62.3,-40.6 -65.1,-41 -64.3,-42.6 -65.2,-45 -67.6,-46.1 "
        "-66.2,-47.8 -69.1,-50.4 -68.4,-52.3 -68.6,-54.8 -65.3,-54.9 -67.3,-55.9 -70.4,-55.2 "
        "-73.7,-52.7 -75.5,-48.6 -73.9,-46.3 -74.2,-43.2 -73.5,-41.4 -73.7,-37.2 -71.6,-33.2 "
        "-71.4,-28.8 -70.5,-23.5 -70.3,-18.3 -71.4,-17.6 -76.2,-14 -77.7,-11.2 -79.6,-7.2 "
        "-81.2,-6.1 -81.1,-4.2 -80,-2.6 -80.9,-1.1 -80,0.9 -78.8,1.5 -77.3,3.9 -77.6,6.8"
    ),
    "eurasia": (
        "-9.3,43.1 -8.9,41.2 -9.5,38.8 -8.8,37 -6.3,36.8 -5.6,36 -4.4,36.7 -2,36.7 -0.3,38.4 "
        "0.3,40.2 3.2,41.9 3.1,43.1 4.8,43.4 6.9,43.1 8.8,44.4 10.3,43.5 12,42 14,40.8 15.6,40 "
        "15.7,38.1 16.6,38.9 17.1,39.4 18.5,40.2 16,41.4 14,42.5 12.4,44.2 12.3,45.4 13.7,45.6 "
        "14.6,45.2 15.9,43.6 17.6,42.9 19.4,41.9 19.4,40.4 21,38.7 21.6,36.8 22.9,36.5 23.2,38.1 "
        "22.6,40.3 24,40.8 26,40.8 26.7,40.4 26.2,39.4 26.9,38.1 27.4,37 29.6,36.2 32.6,36.1 "
        "34.6,36.8 36.2,36.6 35.8,35.2 35.5,33.9 34.9,32.5 34.3,31.2 34.9,29.5 36.6,25.9 "
        "39.1,21.7 40.9,19.4 42.7,16.4 43.3,12.7 45,12.8 48.7,14 52.2,15.6 55.4,17.6 57.8,19 "
        "59.8,22.5 58.6,23.6 56.4,26.2 56.2,24.9 54.1,24.1 51.6,24.6 51.5,25.9 50.2,25.9 "
        "48.5,28.4 48,30 49.6,30 50.8,28.7 51.5,27.9 54.7,26.5 56.7,27.1 57.4,25.7 61.6,25.2 "
        "66.4,25.4 67.4,24 68.6,23.2 70.1,22.6 69.1,22.4 70.4,20.9 72.6,21.4 72.9,19 73.4,16 "
        "74.8,12.9 76.3,9.6 77.5,8.1 78.2,8.9 79.3,10.3 79.9,12.5 80.3,15.6 82.3,16.6 84.8,19.2 "
        "86.9,21.3 88.9,21.7 90.6,22.6 92.2,21.1 94.3,18.2 94.3,16 97.6,16.6 98.2,13.3 98.6,9.9 "
        "98.3,8.1 100.1,6.2 100.4,4 101.4,2.6 103.5,1.3 104.2,1.5 103.4,4.3 102.2,6.2 100.4,7.2 "
        "99.2,9.3 99.9,12.5 100.1,13.4 101,12.7 102.8,12 105,8.6 106.8,10.4 109,11.4 109.3,13.4 "
        "108.3,16 106.6,17.8 105.7,19 106.8,20.7 108.5,21.6 110.4,20.3 113.5,22.2 117,23.5 "
        "119.5,25.6 121.3,28.2 122,30.8 120.8,32.4 119.3,35 120.7,36.4 122.5,37 118.9,37.4 "
        "117.8,39 119.3,39.8 121,40.8 122.2,40.4 121.2,38.9 124.3,39.9 125.1,38.1 126.4,34.5 "
        "129.3,35.2 129.5,36.9 128.4,38.6 127.5,39.8 129.7,40.8 130.7,42.3 132.9,42.8 135.5,43.9 "
        "138.5,47 140.4,50 140.7,53.2 137.7,54 135.2,54.7 137.6,56.5 142,59.1 148.5,59.3 "
        "152.5,59 155,59.3 156.8,61.6 160.3,61.8 159.2,60.8 156.7,57.8 156,53 156.7,51 "
        "158.5,52.9 160,54.1 162.3,56.2 163.2,58 163.5,59.8 166,60.4 170.4,60 172.5,61 "
        "174.5,61.8 177.5,62.6 179.2,62.4 180,65 180,68.9 176.5,69.8 170.5,70.1 161,69.5 "
        "152,70.9 143.5,72.6 139.5,71.5 132,71.2 128.8,72.9 123.5,73.7 113.5,73.6 112.6,76 "
        "104,77.7 98,76.1 88,75.6 80.6,73.6 80.6,72.2 76,72.3 73,72.8 72.6,71.2 68.5,68.2 "
        "66.4,69 60.5,68.9 54.5,68.3 46,68.1 44,68.5 43.6,66.1 40.7,64.6 37,63.9 34.8,64.5 "
        "34.6,65.8 32.8,67 37,66.4 41.2,66.9 40.8,68.4 33.1,69.4 28.6,70.9 25.6,71.1 18.1,69.8 "
        "14.1,68 12.4,65.8 9.5,63.6 5,62 5,59 6.3,58.1 8,58 10.5,59.3 11.2,58.4 12.6,56.2 "
        "14.2,55.4 16.4,56.5 16.6,57.6 18.6,59.4 17.3,61 17.4,62.5 21.5,65.4 24.5,65.8 "
        "25.4,64.9 21.5,63 21.4,60.5 22.9,59.9 26.4,60.4 30.2,59.9 28,59.5 23.5,59.2 24.3,57.9 "
        "24.1,57 21.7,57.5 21,56.8 21.1,55.7 19.5,54.4 18.6,54.7 14.3,53.9 11,54 10.9,54.4 "
        "10,55.3 10.3,56.5 10.6,57.7 8.4,57 8.1,56.5 8.6,55 8.5,53.6 7,53.4 4.8,53 4.2,52 "
        "3.4,51.4 1.6,50.9 1.5,50.2 0.2,49.7 -1.3,49.7 -1.6,48.6 -4.7,48.4 -2.2,47.2 -1.2,46 "
        "-1.4,44.5 -1.8,43.4 -4.5,43.4 -8,43.7"
    ),
    "novaya-zemlya": (
        "52.5,71.5 56,70.6 58.5,71 56.5,72.8 60,74.9 68.5,76.9 65,77.2 58,75.8 55,74.6 53.5,73"
    ),
    "svalbard": "11,78.8 16,80 27,80.3 22,78 16,76.6 11.5,78",
    "chukotka": "-180,68.9 -175,67.6 -171,66.9 -169.7,66 -172.5,64.4 -177,65.5 -180,65",
    "great-britain": (
        "-5.7,50.1 -3,50.7 1.4,51.3 1.7,52.7 0.3,53.5 -0.2,54.5 -1.4,55 -2,55.9 -3,56 -1.8,57.6 "
        "-3.2,58.6 -5,58.6 -6.2,57.5 -5.6,56 -4.9,54.8 -3.2,54.6 -3,53.3 -4.6,53.3 -4.2,52.3 "
        "-5.3,51.7 -3,51.4"
    ),
    "ireland": (
        "-6,52.2 -6.1,53.5 -5.5,54.6 -7.3,55.3 -8.5,54.6 -10,54.2 -9.5,53 -10.3,51.8 -8.5,51.6"
    ),
    "corsica": "8.6,41.4 9.4,41.4 9.5,43 8.6,42.4",
    "sardinia": "8.4,39 9.6,39.1 9.8,41 8.2,40.9",
    "sicily": "12.4,38.1 15.6,38.3 15.1,36.7 12.4,37.6",
    "crete": "23.5,35.3 26.3,35.3 26,35 24,34.9",
    "cyprus": "32.3,34.7 34.6,35.7 33.8,34.9 32.8,34.6",
    "japan": (
        "129.8,33.2 130.5,31.2 131.4,31.4 132,33.8 135,33.5 136,33.7 137,34.6 139,34.7 "
        "140.9,35.7 141,38.3 142,39.5 141.4,41.4 140,40.8 139.9,39 138.5,37.6 136.8,37.2 "
        "136,35.7 133,35.5 131,34.4"
    ),
    "hokkaido": "140,41.5 141.2,41.8 143.3,42 145.5,43.3 144.5,44 141.8,45.4 141.4,43.3 140,42.8",
    "sakhalin": "142,46 143.4,46.6 143.2,49.5 144.5,49 143,52.5 143.2,54.2 142.5,54.3 142,51",
    "taiwan": "120.1,23 120.9,21.9 121.9,25 121.5,25.3",
    "hainan": "108.6,19.2 109.7,18.2 111,19.6 110.1,20.1",
    "sri-lanka": "79.8,6.9 80,9.8 81.9,7.5 80.5,5.9",
    "luzon": "120.6,18.5 122.3,18.4 122,16 124,13.5 121.7,13.9 120.6,14.3 119.8,16.4",
    "mindanao": "122,7 126.2,6.4 126.6,9.2 125.4,9.8 123.5,8.6",
    "sumatra": (
        "95.3,5.6 97.5,5.2 100.4,2.3 104,-1 106,-3 105.8,-5.8 104.5,-5.9 102,-4 100.3,-0.8 "
        "98.7,1.7 96,4"
    ),
    "java": (
        "105.2,-6.8 106.5,-6 108.5,-6.5 111,-6.4 112.8,-6.9 114.5,-7.7 114.4,-8.7 111,-8.2 108,-7.8"
    ),
    "borneo": (
        "109,1.8 109.6,-1 110.3,-3 114.5,-4 116.5,-2.5 117.5,0.5 119,1 117.8,4.2 119.2,5.2 117,7 "
        "116,6 113.5,3.8 111,2.5"
    ),
    "sulawesi": (
        "119.4,-5.5 120.4,-5.6 120.9,-2.7 122.5,-4.7 123.2,-4 121.6,-1.3 123.3,-0.9 121,-0.8 "
        "120.2,0.9 124.9,1.4 120.5,1.3 119.8,0 118.8,-2.8"
    ),
    "new-guinea": (
        "131,-1 134,-1 138,-1.8 141,-2.6 145.7,-4.9 147.5,-6.2 150,-10.3 147,-10 144,-7.8 "
        "141,-9.2 138.5,-8.3 137.7,-5.2 135,-4.4 132.5,-3.5 132,-2.8"
    ),
    "australia": (
        "113.5,-22 114,-26.5 115,-30 115,-33.5 117.8,-35.1 123.5,-33.9 126,-32.3 131,-31.5 "
        "134,-32.6 135.8,-34.8 137.8,-33 138,-35.6 140,-37.5 143.5,-38.8 146.3,-39.1 150,-37.5 "
        "151.2,-33.9 153,-31 153.6,-28.2 153,-25.5 150.8,-22.5 149,-20.5 146,-18.5 145.3,-15 "
        "143.5,-14 142.5,-10.7 141.6,-13 141.5,-16.5 140,-17.7 137,-16 135.5,-14.8 136.8,-12.2 "
        "132.6,-11.5 130.8,-12.4 129.5,-15 127.5,-14 125,-14.6 123,-16.5 121.5,-19 118.8,-20.3 "
        "116.7,-20.6 114.2,-21.9"
    ),
    "tasmania": "144.6,-40.7 148.3,-40.9 148,-43.2 146.8,-43.6 145.2,-42.2",
    "new-zealand-north": (
        "172.7,-34.4 174.8,-36.9 178.5,-37.7 177,-39.3 176.8,-40.2 174.8,-41.4 173.8,-39.2"
    ),
    "new-zealand-south": (
        "172.7,-40.5 174.3,-41.7 173,-43.7 171,-44.8 169,-46.6 166.5,-46 168.3,-44 170.5,-43 "
        "172,-41"
    ),
    "africa": (
        "-5.9,35.8 -2,35.1 3,36.8 10,37.2 11,35.5 10.2,34.2 11,33.2 15.2,32.3 19,30.3 20.1,32.1 "
        "23,32.6 25,31.6 29.9,31.2 32.3,31.3 32.6,29.9 33.6,27.2 35.5,23.9 37.2,21 38.5,18 "
        "39.7,15.5 41.7,13.4 43.3,11.6 44.5,10.4 51.2,11.8 51,10.4 49,6 47.5,4 43,-0.5 40,-3 "
        "39,-6.5 40.4,-10.5 40.6,-15 36,-18.8 35.3,-22 32.6,-25.9 32.8,-28.8 30.8,-30.5 "
        "27.9,-33 25.6,-34 20,-34.8 18.4,-34.2 18,-32 15.2,-27 14.5,-22.8 11.8,-17.3 12.4,-13.5 "
        "13.2,-8.8 12.2,-6 11.8,-4 9,-0.5 9.5,3 9.7,4 8.7,4.4 6,4.3 3.4,6.4 1.2,6.1 -2,4.8 "
        "-4,5.2 -7.5,4.4 -11.5,6.9 -13.3,9 -15,11 -16.7,12.5 -17.5,14.7 -16.5,19.4 -17,21 "
        "-15.9,23.7 -13,27.5 -9.8,29.8 -9.6,32.5 -6.8,34"
    ),
    "madagascar": (
        "49.3,-12 50.5,-15.5 49.5,-17.5 47.1,-24.9 45.2,-25.5 43.6,-23.4 44,-20 44.4,-16.2 "
        "46.5,-15.7 48,-13.4"
    ),
}

# Inland seas, painted over the land in the ocean colour.
_WATER: dict[str, str] = {
    "black-sea": (
        "28,41.3 28.7,43.5 29.7,45.3 30.7,46.5 33,46 32.5,45.4 33.6,44.4 36.5,45.3 37.5,44.7 "
        "40,43.4 41.6,41.6 38,40.9 35,42 31.5,41.2 29,41.2"
    ),
    "caspian-sea": (
        "47.5,45.5 49,46.6 53,46.9 53.2,45.3 51,44.5 52.5,42 53.5,40.8 54,37.5 51,36.7 "
        "49,37.6 49.3,40.5 48,42 47.5,43 47,44.6"
    ),
}


def _fmt(v: float) -> str:
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


def project(lat: float, lon: float) -> tuple[float, float]:
    """Equirectangular projection onto the map's user units (x east, y down)."""
    return (lon + 180.0) / 360.0 * MAP_WIDTH, (90.0 - lat) / 180.0 * MAP_HEIGHT


def _ring_path(ring: str) -> str:
    parts = []
    for i, pair in enumerate(ring.split()):
        lon_s, lat_s = pair.split(",")
        x, y = project(float(lat_s), float(lon_s))
        parts.append(f"{'M' if i == 0 else 'L'}{_fmt(x)},{_fmt(y)}")
    return "".join(parts) + "Z"


def land_paths() -> dict[str, str]:
    """SVG path data for each landmass, in map user units."""
    return {name: _ring_path(ring) for name, ring in _LAND.items()}


def _map_svg() -> str:
    top = (90.0 - LAT_TOP) / 180.0 * MAP_HEIGHT
    height = (LAT_TOP - LAT_BOTTOM) / 180.0 * MAP_HEIGHT
    lines: list[str] = []
    for lon in range(-180, 181, 30):
        x, _ = project(0.0, float(lon))
        lines.append(f"M{_fmt(x)},0V{_fmt(MAP_HEIGHT)}")
    for lat in range(-60, 91, 30):
        _, y = project(float(lat), 0.0)
        lines.append(f"M0,{_fmt(y)}H{_fmt(MAP_WIDTH)}")
    land = "\n".join(
        f'<path class="land" data-name="{name}" d="{d}"/>' for name, d in land_paths().items()
    )
    water = "\n".join(
        f'<path class="water" data-name="{name}" d="{_ring_path(ring)}"/>'
        for name, ring in _WATER.items()
    )
    _, equator = project(0.0, 0.0)
    return f"""<svg id="map" class="map" viewBox="0 {_fmt(top)} {_fmt(MAP_WIDTH)} {_fmt(height)}"
 preserveAspectRatio="xMidYMid meet" role="img" aria-label="World map of regions">
<defs>
<marker id="spill-arrow" viewBox="0 0 10 10" refX="6" refY="5" markerWidth="13" markerHeight="13"
 markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0.5L10,5L0,9.5L2.5,5Z"/></marker>
<radialGradient id="ocean-glow" cx="50%" cy="45%" r="75%">
<stop offset="0" stop-color="#12203a"/><stop offset="1" stop-color="#0b1424"/></radialGradient>
</defs>
<rect class="ocean" x="0" y="{_fmt(top)}" width="{_fmt(MAP_WIDTH)}" height="{_fmt(height)}"/>
<path class="graticule" d="{"".join(lines)}"/>
<path class="equator" d="M0,{_fmt(equator)}H{_fmt(MAP_WIDTH)}"/>
<g id="land" class="land-layer">
{land}
{water}
</g>
<g id="spills" class="spills-layer"></g>
<g id="regions" class="regions-layer"></g>
<g id="labels" class="labels-layer"></g>
</svg>"""


_CSS = """
:root {
  --bg: #0a0f1c; --panel: #101828; --panel-2: #0d1524; --border: #1e293b; --text: #e2e8f0;
  --muted: #8391a7; --faint: #5b6b84; --ok: #22c55e; --panic: #f59e0b; --drain: #3b82f6;
  --down: #ef4444; --spill: #c084fc; --land: #1b2740; --land-edge: #2c3b5a;
}
* { box-sizing: border-box; }
html, body { margin: 0; background: var(--bg); color: var(--text); }
body {
  font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Liberation Sans", "DejaVu Sans", sans-serif;
  font-variant-numeric: tabular-nums;
}
header {
  display: flex; align-items: center; gap: 18px; padding: 12px 22px;
  border-bottom: 1px solid var(--border); background: var(--panel-2);
}
.brand {
  display: flex; align-items: center; gap: 10px; font-size: 16px; font-weight: 650;
  white-space: nowrap;
}
.brand .mark {
  width: 22px; height: 22px; border-radius: 50%; border: 2px solid var(--ok);
  box-shadow: 0 0 0 3px rgba(34, 197, 94, 0.15) inset;
}
.brand small { color: var(--muted); font-weight: 400; font-size: 13px; }
.facts { display: flex; gap: 8px; margin-left: auto; flex-wrap: wrap; }
.fact {
  display: flex; gap: 6px; align-items: baseline; padding: 3px 10px; border-radius: 999px;
  border: 1px solid var(--border); background: var(--panel);
}
.fact .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .04em; }
.fact .v { font-weight: 600; }
.fact.good .v { color: var(--ok); }
.fact.bad .v { color: var(--down); }
.live { width: 8px; height: 8px; border-radius: 50%; background: var(--ok); align-self: center; }
.stale .live { background: var(--down); }
#banner {
  display: none; margin: 12px 22px 0; padding: 9px 14px; border-radius: 8px;
  border: 1px solid rgba(239, 68, 68, .55); background: rgba(239, 68, 68, .12); color: #fecaca;
}
#banner.shown { display: block; }
main { padding: 14px 22px 28px; display: grid; gap: 14px; }
.top { display: grid; grid-template-columns: minmax(0, 1fr) 290px; gap: 14px; }
.card {
  background: var(--panel); border: 1px solid var(--border); border-radius: 10px;
  overflow: hidden;
}
.card h2 {
  margin: 0; padding: 10px 14px; font-size: 12px; font-weight: 600; color: var(--muted);
  text-transform: uppercase; letter-spacing: .06em; border-bottom: 1px solid var(--border);
}
.mapwrap { position: relative; line-height: 0; }
svg.map { display: block; width: 100%; height: auto; }
.ocean { fill: url(#ocean-glow); }
.graticule { fill: none; stroke: rgba(148, 163, 184, .09); stroke-width: .6; }
.equator { fill: none; stroke: rgba(148, 163, 184, .16); stroke-width: .6; stroke-dasharray: 3 3; }
.land { fill: var(--land); stroke: var(--land-edge); stroke-width: .7; stroke-linejoin: round; }
.water { fill: #101c33; stroke: var(--land-edge); stroke-width: .6; }
#spill-arrow path { fill: var(--spill); }
.spill { fill: none; stroke: var(--spill); stroke-opacity: .9; stroke-linecap: butt; }
.spill-count { font-size: 9px; font-weight: 700; fill: #f3e8ff; text-anchor: middle; }
.spill-count-bg { fill: #2e1a47; stroke: var(--spill); stroke-width: .6; }
circle.region { stroke-width: 1.6; fill-opacity: .28; }
circle.region.role-standby { stroke-dasharray: 3 2.2; fill-opacity: .12; }
circle.core { stroke: none; }
.label {
  font-size: 10.5px; font-weight: 600; fill: #dbe4f0; paint-order: stroke;
  stroke: #0a1222; stroke-width: 3px; stroke-linejoin: round;
}
.label.state-unroutable { fill: #fca5a5; }
.side { display: flex; flex-direction: column; gap: 14px; }
.side .card { flex: 0 0 auto; }
.side .card.grow { flex: 1 1 auto; }
.stats { display: grid; grid-template-columns: 1fr 1fr; gap: 1px; background: var(--border); }
.stat { background: var(--panel); padding: 9px 14px; }
.stat .n { font-size: 20px; font-weight: 650; }
.stat .k { color: var(--muted); font-size: 11px; }
.bars { padding: 8px 14px 12px; display: grid; gap: 7px; }
.bar-row { display: grid; grid-template-columns: 86px 1fr 52px; gap: 8px; align-items: center; }
.bar-row .k { color: var(--muted); font-size: 12px; }
.bar-row .n { text-align: right; font-weight: 600; }
.bars-foot {
  margin-top: 4px; padding-top: 9px; border-top: 1px solid var(--border); color: var(--muted);
  font-size: 12px;
}
.track { height: 7px; border-radius: 4px; background: #1a2437; overflow: hidden; }
.fill { height: 100%; border-radius: 4px; background: var(--ok); width: 0; }
.fill.d-spill { background: var(--spill); }
.fill.d-failover, .fill.d-no-region { background: var(--down); }
.fill.d-local-queued { background: var(--panic); }
.fill.d-standby { background: var(--drain); }
.card h2.with-legend { display: flex; align-items: center; gap: 16px; }
.legend {
  margin-left: auto; display: flex; gap: 14px; color: var(--muted); font-size: 11.5px;
  font-weight: 400; text-transform: none; letter-spacing: 0;
}
.legend span.sw {
  display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px;
  vertical-align: -1px; border: 1.5px solid;
}
.sw.routable { border-color: var(--ok); background: rgba(34, 197, 94, .3); }
.sw.panic { border-color: var(--panic); background: rgba(245, 158, 11, .3); }
.sw.draining { border-color: var(--drain); background: rgba(59, 130, 246, .3); }
.sw.unroutable { border-color: var(--down); background: rgba(239, 68, 68, .3); }
.sw.standby { border-color: var(--muted); border-style: dashed; }
.legend span.sw.spill {
  border: none; border-radius: 2px; height: 3px; width: 18px; background: var(--spill);
  vertical-align: 3px;
}
table { width: 100%; border-collapse: collapse; }
th, td { padding: 7px 12px; text-align: left; white-space: nowrap; }
th {
  font-size: 11px; font-weight: 600; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; border-bottom: 1px solid var(--border); background: var(--panel-2);
}
td { border-bottom: 1px solid rgba(30, 41, 59, .6); }
tbody tr:last-child td { border-bottom: none; }
tbody tr:hover td { background: rgba(148, 163, 184, .04); }
td.num, th.num { text-align: right; }
td.reason { white-space: normal; min-width: 180px; }
.scroll { overflow-x: auto; }
td.muted { color: var(--muted); }
td.mono {
  font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12px;
}
.name { font-weight: 600; }
.dot {
  display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 8px;
  vertical-align: 0;
}
.badge {
  display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 11.5px;
  font-weight: 600; border: 1px solid;
}
.s-routable, .s-up {
  color: #86efac; border-color: rgba(34, 197, 94, .45); background: rgba(34, 197, 94, .1);
}
.s-panic, .s-cordoned {
  color: #fcd34d; border-color: rgba(245, 158, 11, .45); background: rgba(245, 158, 11, .1);
}
.s-draining {
  color: #93c5fd; border-color: rgba(59, 130, 246, .45); background: rgba(59, 130, 246, .1);
}
.s-unroutable, .s-down, .s-ejected {
  color: #fca5a5; border-color: rgba(239, 68, 68, .45); background: rgba(239, 68, 68, .1);
}
.s-other { color: var(--muted); border-color: var(--border); }
.role-standby-text { color: var(--muted); font-style: italic; }
.util { display: inline-flex; align-items: center; gap: 8px; justify-content: flex-end; }
.util .track { width: 64px; }
.util .fill.hot { background: var(--panic); }
.util .fill.over { background: var(--down); }
.warn { color: #fcd34d; }
.empty { padding: 14px; color: var(--muted); }
@media (max-width: 1100px) { .top { grid-template-columns: 1fr; } }
"""

_BODY = """
<header>
  <div class="brand"><span class="mark"></span>gslb <small>global load balancer</small></div>
  <div class="facts" id="facts">
    <div class="fact">
      <span class="k">generation</span><span class="v" id="f-generation">–</span>
    </div>
    <div class="fact"><span class="k">uptime</span><span class="v" id="f-uptime">–</span></div>
    <div class="fact"><span class="k">backend</span><span class="v" id="f-backend">–</span></div>
    <div class="fact"><span class="k">workers</span><span class="v" id="f-workers">–</span></div>
    <div class="fact" id="f-ready-box">
      <span class="k">ready</span><span class="v" id="f-ready">–</span>
    </div>
    <div class="fact" id="f-refresh-box">
      <span class="live"></span><span class="k">updated</span>
      <span class="v" id="f-refresh">never</span>
    </div>
  </div>
</header>
<div id="banner" role="alert"></div>
<main>
  <div class="top">
    <section class="card">
      <h2 class="with-legend">Fleet map
        <span class="legend">
          <span><span class="sw routable"></span>routable</span>
          <span><span class="sw panic"></span>panic</span>
          <span><span class="sw draining"></span>draining</span>
          <span><span class="sw unroutable"></span>not routable</span>
          <span><span class="sw standby"></span>standby</span>
          <span><span class="sw spill"></span>recent spills</span>
        </span>
      </h2>
      <div class="mapwrap">
__MAP__
      </div>
    </section>
    <div class="side">
      <section class="card">
        <h2>Fleet</h2>
        <div class="stats">
          <div class="stat">
            <div class="n" id="s-routable">–</div><div class="k">regions routable</div>
          </div>
          <div class="stat">
            <div class="n" id="s-endpoints">–</div><div class="k">endpoints up</div>
          </div>
          <div class="stat">
            <div class="n" id="s-inflight">–</div><div class="k">requests in flight</div>
          </div>
          <div class="stat">
            <div class="n" id="s-util">–</div><div class="k">fleet utilisation</div>
          </div>
        </div>
      </section>
      <section class="card grow">
        <h2>Routing decisions</h2>
        <div class="bars" id="decisions"></div>
      </section>
    </div>
  </div>
  <section class="card">
    <h2>Regions</h2>
    <div class="scroll"><table id="regions-table">
      <thead><tr>
        <th>Region</th><th>Provider</th><th>Tier</th><th>Jurisdiction</th><th>Role</th>
        <th>State</th><th class="num">In flight</th><th class="num">Capacity</th>
        <th class="num">Utilisation</th><th class="num">TTFB (EWMA)</th>
        <th class="num">Probe RTT</th>
      </tr></thead>
      <tbody id="regions-body">
        <tr><td colspan="11" class="empty">Waiting for /status…</td></tr>
      </tbody>
    </table></div>
  </section>
  <section class="card">
    <h2>Endpoints</h2>
    <div class="scroll"><table id="endpoints-table">
      <thead><tr>
        <th>Region</th><th>URL</th><th>Node</th><th>Capacity type</th><th>State</th>
        <th class="num">In flight</th><th class="num">Reported load</th>
        <th class="num">Failures in a row</th><th>Cordon reason</th>
      </tr></thead>
      <tbody id="endpoints-body"></tbody>
    </table></div>
  </section>
</main>
"""

_JS = """
(() => {
  'use strict';
  const CFG = __CONFIG__;
  const svg = document.getElementById('map');
  const NS = svg.namespaceURI;  // the SVG namespace, without spelling out a URL
  const byId = (id) => document.getElementById(id);
  const COLORS = {
    routable: '#22c55e', panic: '#f59e0b', draining: '#3b82f6', unroutable: '#ef4444',
  };
  const STATE_TEXT = {
    routable: 'routable', panic: 'panic', draining: 'draining', unroutable: 'not routable',
  };
  const ENDPOINT_STATES = ['up', 'down', 'ejected', 'cordoned', 'draining'];
  const DECISIONS = ['local', 'spill', 'failover', 'local-queued', 'standby', 'no-region'];
  let lastOk = null;
  let refreshes = 0;

  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function s(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(v) { return typeof v === 'number' && Number.isFinite(v) ? v : null; }
  function str(v) { return v === undefined || v === null ? '' : String(v); }
  function list(v) { return Array.isArray(v) ? v : []; }
  function fixed(v, digits) { const n = num(v); return n === null ? '—' : n.toFixed(digits); }
  function project(lat, lon) {
    return [(lon + 180) / 360 * CFG.width, (90 - lat) / 180 * CFG.height];
  }
  function regionState(r) {
    if (r.draining === true) return 'draining';
    if (r.routable !== true) return 'unroutable';
    if (r.panic === true) return 'panic';
    return 'routable';
  }
  function endpointClass(state) {
    return ENDPOINT_STATES.includes(state) ? 's-' + state : 's-other';
  }
  function radius(r) {
    return Math.min(CFG.maxRadius, 5 + 1.2 * Math.sqrt(Math.max(0, num(r.inflight) || 0)));
  }
  function duration(sec) {
    const t = Math.max(0, Math.floor(num(sec) || 0));
    const d = Math.floor(t / 86400), hh = Math.floor(t % 86400 / 3600);
    const m = Math.floor(t % 3600 / 60), ss = t % 60;
    if (d) return d + 'd ' + hh + 'h';
    if (hh) return hh + 'h ' + m + 'm';
    if (m) return m + 'm ' + ss + 's';
    return ss + 's';
  }
  function clock(d) { return d.toTimeString().slice(0, 8); }

  function drawMap(regions, spills) {
    const layerS = byId('spills'), layerR = byId('regions'), layerL = byId('labels');
    const placed = new Map();
    const items = [];
    for (const r of regions) {
      const loc = list(r.location);
      const lat = num(loc[0]), lon = num(loc[1]);
      if (lat === null || lon === null) continue;
      const [x, y] = project(lat, lon);
      const item = { r, x, y, rad: radius(r), state: regionState(r), name: str(r.name) };
      items.push(item);
      placed.set(item.name, item);
    }
    // Spill arrows: a quadratic curve from the source's rim to the target's rim.
    const arrows = [];
    let maxCount = 1;
    for (const sp of list(spills)) maxCount = Math.max(maxCount, num(sp && sp.count) || 0);
    for (const sp of list(spills)) {
      if (!sp || typeof sp !== 'object') continue;
      const a = placed.get(str(sp.from)), b = placed.get(str(sp.to));
      const count = Math.max(0, num(sp.count) || 0);
      if (!a || !b || a === b || count <= 0) continue;
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy);
      if (len < 1) continue;
      // Bend the curve sideways; neighbours get a taller hop so the arrow clears both circles.
      const off = Math.max(len * 0.22, a.rad + b.rad + 24 - len * 0.5);
      const cx = (a.x + b.x) / 2 + dy / len * off, cy = (a.y + b.y) / 2 - dx / len * off;
      const from = towards(a, cx, cy, a.rad + 2), to = towards(b, cx, cy, b.rad + 6);
      const width = 1.5 + 3.5 * Math.sqrt(count / maxCount);
      const path = s('path', {
        class: 'spill',
        d: 'M' + pt(from[0], from[1]) + 'Q' + pt(cx, cy) + ' ' + pt(to[0], to[1]),
        'stroke-width': f(width), 'marker-end': 'url(#spill-arrow)',
        'data-from': a.name, 'data-to': b.name, 'data-count': count,
      });
      path.appendChild(s('title', {}, a.name + ' → ' + b.name + ': ' + count + ' spilled'));
      let mx = 0.25 * from[0] + 0.5 * cx + 0.25 * to[0];
      let my = 0.25 * from[1] + 0.5 * cy + 0.25 * to[1];
      const text = String(count);
      const g = s('g', { class: 'spill-tag' });
      const w = 7 + text.length * 5.6;
      // Short arrows: push the count tag outwards until it clears both circles.
      const px = cx - (a.x + b.x) / 2, py = cy - (a.y + b.y) / 2, plen = Math.hypot(px, py) || 1;
      for (let k = 0; k < 8 && (hits(mx, my, w, a) || hits(mx, my, w, b)); k++) {
        mx += px / plen * 4;
        my += py / plen * 4;
      }
      g.appendChild(s('rect', {
        class: 'spill-count-bg', x: f(mx - w / 2), y: f(my - 6.5), width: f(w), height: 13, rx: 6.5,
      }));
      g.appendChild(s('text', { class: 'spill-count', x: f(mx), y: f(my + 3.2) }, text));
      arrows.push(path, g);
    }
    // Bigger circles first, so small ones stay clickable and visible on top.
    items.sort((p, q) => q.rad - p.rad);
    const circles = [];
    for (const it of items) {
      const color = COLORS[it.state];
      const role = str(it.r.role) === 'standby' ? 'standby' : 'active';
      const c = s('circle', {
        class: 'region state-' + it.state + ' role-' + role, cx: f(it.x), cy: f(it.y), r: f(it.rad),
        fill: color, stroke: color, 'data-region': it.name, 'data-state': it.state,
        'data-role': role, 'data-inflight': num(it.r.inflight) || 0,
      });
      const tip = it.name + ' — ' + STATE_TEXT[it.state] + ', ' + (num(it.r.inflight) || 0) +
        ' in flight' + (role === 'standby' ? ', standby' : '');
      c.appendChild(s('title', {}, tip));
      const core = s('circle', { class: 'core', cx: f(it.x), cy: f(it.y), r: 2.2, fill: color });
      circles.push(c, core);
    }
    const labels = placeLabels(items);
    layerS.replaceChildren(...arrows);
    layerR.replaceChildren(...circles);
    layerL.replaceChildren(...labels);
  }
  function hits(x, y, w, c) {
    const nx = Math.max(x - w / 2, Math.min(c.x, x + w / 2));
    const ny = Math.max(y - 6.5, Math.min(c.y, y + 6.5));
    return Math.hypot(nx - c.x, ny - c.y) < c.rad + 1;
  }
  function pt(x, y) { return f(x) + ',' + f(y); }
  function f(v) { return (Math.round(v * 10) / 10).toString(); }
  function towards(p, x, y, d) {
    const dx = x - p.x, dy = y - p.y, len = Math.hypot(dx, dy) || 1;
    return [p.x + dx / len * d, p.y + dy / len * d];
  }
  // Greedy label placement: try a few spots around each circle, keep the least crowded one.
  function placeLabels(items) {
    const boxes = [];
    const out = [];
    const ordered = items.slice().sort((p, q) => p.x - q.x);
    for (const it of ordered) {
      const w = it.name.length * 6.1 + 2, hgt = 11, gap = 3;
      const spots = [
        [it.x + it.rad + gap, it.y - hgt / 2, 'start'],
        [it.x - it.rad - gap - w, it.y - hgt / 2, 'end'],
        [it.x - w / 2, it.y - it.rad - gap - hgt, 'middle'],
        [it.x - w / 2, it.y + it.rad + gap, 'middle'],
        [it.x + it.rad * 0.7 + gap, it.y - it.rad * 0.7 - hgt, 'start'],
        [it.x + it.rad * 0.7 + gap, it.y + it.rad * 0.7, 'start'],
        [it.x - it.rad * 0.7 - gap - w, it.y - it.rad * 0.7 - hgt, 'end'],
        [it.x - it.rad * 0.7 - gap - w, it.y + it.rad * 0.7, 'end'],
      ];
      let best = null, bestScore = Infinity;
      for (const [x, y, anchor] of spots) {
        const box = { x, y, w, h: hgt };
        let score = 0;
        for (const b of boxes) score += overlap(box, b);
        for (const o of items) if (o !== it) score += overlapCircle(box, o) * 0.8;
        const outside = box.x < 0 || box.x + w > CFG.width || box.y < CFG.top ||
          box.y + hgt > CFG.top + CFG.viewHeight;
        if (outside) score += 1000;
        if (score < bestScore - 0.01) { best = { box, anchor }; bestScore = score; }
      }
      boxes.push(best.box);
      const tx = best.anchor === 'start' ? best.box.x
        : best.anchor === 'end' ? best.box.x + w : best.box.x + w / 2;
      out.push(s('text', {
        class: 'label state-' + it.state, x: f(tx), y: f(best.box.y + hgt - 2),
        'text-anchor': best.anchor, 'data-region': it.name,
      }, it.name));
    }
    return out;
  }
  function overlap(a, b) {
    const x = Math.max(0, Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x));
    const y = Math.max(0, Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y));
    return x * y;
  }
  function overlapCircle(a, c) {
    const box = { x: c.x - c.rad, y: c.y - c.rad, w: 2 * c.rad, h: 2 * c.rad };
    return overlap(a, box);
  }

  function cell(text, cls) { return h('td', cls || '', text); }
  function badge(text, cls) {
    const td = h('td');
    td.appendChild(h('span', 'badge ' + cls, text));
    return td;
  }
  function utilCell(u) {
    const td = h('td', 'num');
    const v = num(u);
    if (v === null) { td.textContent = '—'; return td; }
    const wrap = h('span', 'util');
    const track = h('span', 'track');
    const fill = h('span', 'fill' + (v >= 1 ? ' over' : v >= CFG.hotUtil ? ' hot' : ''));
    fill.style.width = Math.min(100, Math.max(0, v * 100)).toFixed(1) + '%';
    fill.style.display = 'block';
    track.appendChild(fill);
    wrap.append(track, h('span', '', (v * 100).toFixed(0) + '%'));
    td.appendChild(wrap);
    return td;
  }
  function msCell(v) {
    const n = num(v);
    if (n === null) return cell('—', 'num muted');
    return cell(n.toFixed(n < 10 ? 1 : 0) + ' ms', 'num');
  }
  function emptyRow(text, span) {
    const tr = h('tr');
    const td = h('td', 'empty', text);
    td.colSpan = span;
    tr.appendChild(td);
    return tr;
  }

  function drawTables(regions) {
    const rb = [], eb = [];
    for (const r of regions) {
      const state = regionState(r);
      const role = str(r.role) || 'active';
      const tr = h('tr', 'region-row state-' + state);
      tr.dataset.region = str(r.name);
      tr.dataset.state = state;
      const name = h('td', 'name');
      const dot = h('span', 'dot');
      dot.style.background = COLORS[state];
      name.append(dot, document.createTextNode(str(r.name)));
      tr.append(
        name, cell(str(r.provider)), cell(str(r.tier), 'muted'), cell(str(r.jurisdiction)),
        cell(role, role === 'standby' ? 'role-standby-text' : ''),
        badge(STATE_TEXT[state], 's-' + state),
        cell(num(r.inflight) ?? '—', 'num'), cell(num(r.capacity) ?? '—', 'num muted'),
        utilCell(r.util),
        msCell(r.ewma_ttfb_ms), msCell(r.ewma_probe_rtt_ms),
      );
      rb.push(tr);
      for (const ep of list(r.endpoints)) {
        const st = str(ep.state) || 'unknown';
        const row = h('tr', 'endpoint-row');
        row.dataset.region = str(r.name);
        row.dataset.state = st;
        const fails = num(ep.consecutive_failures) || 0;
        const load = num(ep.reported_load);
        row.append(
          cell(str(r.name), 'muted'), cell(str(ep.url), 'mono'), cell(str(ep.node), 'mono'),
          cell(str(ep.capacity_type), 'muted'), badge(st, endpointClass(st)),
          cell(num(ep.inflight) ?? '—', 'num'),
          load === null ? cell('—', 'num muted') : cell(load.toFixed(2), 'num'),
          cell(fails, 'num' + (fails ? ' warn' : ' muted')),
          cell(str(ep.cordon_reason) || '—', ep.cordon_reason ? 'reason warn' : 'reason muted'),
        );
        eb.push(row);
      }
    }
    if (!rb.length) rb.push(emptyRow('No regions configured.', 11));
    if (!eb.length) eb.push(emptyRow('No endpoints.', 9));
    byId('regions-body').replaceChildren(...rb);
    byId('endpoints-body').replaceChildren(...eb);
  }

  function drawSide(data, regions) {
    let routable = 0, inflight = 0, capacity = 0, epUp = 0, epAll = 0;
    for (const r of regions) {
      const st = regionState(r);
      if (st === 'routable' || st === 'panic') routable++;
      inflight += num(r.inflight) || 0;
      capacity += num(r.capacity) || 0;
      for (const ep of list(r.endpoints)) { epAll++; if (str(ep.state) === 'up') epUp++; }
    }
    byId('s-routable').textContent = routable + ' / ' + regions.length;
    byId('s-endpoints').textContent = epUp + ' / ' + epAll;
    byId('s-inflight').textContent = String(inflight);
    byId('s-util').textContent = capacity ? (inflight / capacity * 100).toFixed(0) + '%' : '—';
    const dec = data.decisions && typeof data.decisions === 'object' ? data.decisions : {};
    const keys = DECISIONS.concat(Object.keys(dec).filter((k) => !DECISIONS.includes(k)));
    let total = 0;
    for (const k of keys) total += Math.max(0, num(dec[k]) || 0);
    const rows = [];
    for (const k of keys) {
      const n = Math.max(0, num(dec[k]) || 0);
      const row = h('div', 'bar-row');
      row.dataset.decision = k;
      const track = h('div', 'track');
      const fill = h('div', 'fill d-' + (DECISIONS.includes(k) ? k : 'other'));
      fill.style.width = (total ? n / total * 100 : 0).toFixed(1) + '%';
      track.appendChild(fill);
      row.append(h('span', 'k', k), track, h('span', 'n', n.toLocaleString('en-US')));
      rows.push(row);
    }
    const spilled = (Math.max(0, num(dec.spill) || 0) + Math.max(0, num(dec.failover) || 0));
    const foot = h('div', 'bars-foot', total.toLocaleString('en-US') + ' decisions' +
      (total ? ' · ' + (spilled / total * 100).toFixed(1) + '% spilled or failed over' : ''));
    rows.push(foot);
    byId('decisions').replaceChildren(...rows);
  }

  function drawHeader(data) {
    byId('f-generation').textContent = str(num(data.generation) ?? '–');
    byId('f-uptime').textContent = duration(data.uptime_s);
    byId('f-backend').textContent = str(data.backend) || '–';
    byId('f-workers').textContent = str(num(data.workers) ?? '–');
    byId('f-ready').textContent = data.ready === true ? 'yes' : 'no';
    byId('f-ready-box').className = 'fact ' + (data.ready === true ? 'good' : 'bad');
  }

  function render(data) {
    const regions = list(data.regions).filter((r) => r && typeof r === 'object');
    drawHeader(data);
    drawMap(regions, data.spills);
    drawTables(regions);
    drawSide(data, regions);
  }

  function setStatus(ok, message) {
    const banner = byId('banner');
    const box = byId('f-refresh-box');
    document.documentElement.dataset.status = ok ? 'ok' : 'error';
    if (ok) {
      banner.className = '';
      banner.textContent = '';
      box.className = 'fact';
    } else {
      banner.className = 'shown';
      banner.textContent = 'Cannot load /status: ' + message +
        (lastOk ? ' — showing data from ' + clock(lastOk) + '.' : '.');
      box.className = 'fact stale';
    }
  }

  async function refresh() {
    try {
      const resp = await fetch(CFG.statusPath, {
        cache: 'no-store', headers: { Accept: 'application/json' },
      });
      if (!resp.ok) {
        throw new Error('HTTP ' + resp.status + (resp.statusText ? ' ' + resp.statusText : ''));
      }
      const data = await resp.json();
      if (!data || typeof data !== 'object') throw new Error('not a JSON object');
      render(data);
      lastOk = new Date();
      byId('f-refresh').textContent = clock(lastOk);
      setStatus(true, '');
    } catch (err) {
      setStatus(false, err && err.message ? err.message : String(err));
    } finally {
      refreshes++;
      document.documentElement.dataset.refreshes = String(refreshes);
      setTimeout(refresh, CFG.refreshMs);
    }
  }
  refresh();
})();
"""


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _script() -> str:
    top = (90.0 - LAT_TOP) / 180.0 * MAP_HEIGHT
    config = {
        "width": MAP_WIDTH,
        "height": MAP_HEIGHT,
        "top": top,
        "viewHeight": (LAT_TOP - LAT_BOTTOM) / 180.0 * MAP_HEIGHT,
        "maxRadius": 22,
        "hotUtil": 0.85,
        "refreshMs": REFRESH_MS,
        "statusPath": "/status",
    }
    return _JS.replace("__CONFIG__", json.dumps(config))


def _content_security_policy(script: str, style: str) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_csp_hash(script)}",
            f"style-src {_csp_hash(style)}",
            "connect-src 'self'",
            "img-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )


def render_status_page() -> str:
    """The whole page: a self-contained HTML document with no external references."""
    script = _script()
    csp = _content_security_policy(script, _CSS)
    body = _BODY.replace("__MAP__", _map_svg())
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        "<title>gslb status</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n<script>{script}</script>\n"
        "</body>\n</html>\n"
    )


STATUS_PAGE: str = render_status_page()
CONTENT_SECURITY_POLICY: str = _content_security_policy(_script(), _CSS)


async def handle_status_page(request: web.Request) -> web.Response:
    """aiohttp handler for ``GET /`` on the admin listener."""
    return web.Response(
        text=STATUS_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )
