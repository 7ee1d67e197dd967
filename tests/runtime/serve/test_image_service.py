"""ImageService: memory that big images needed goes back to the OS afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Four 25-megapixel PNGs through /img/stats' path at once, in a fresh process: RSS before,
# at its peak and after, in MB.
FOUR_BIG_STATS = """
import io, os, resource, threading
from PIL import Image
from encoderfile.runtime.serve.image_service import ImageService

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

buffer = io.BytesIO()
Image.new("RGBA", (5000, 5000), (10, 200, 30, 255)).save(buffer, "PNG", compress_level=1)
data = buffer.getvalue()
service = ImageService(bundle=None, max_inputs=4)
before = rss()
jobs = [threading.Thread(target=service.stats, args=(data, None, "content")) for _ in range(4)]
[job.start() for job in jobs]
[job.join() for job in jobs]
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss())
"""


@pytest.mark.slow  # decodes 100 megapixels in a process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's malloc")
def test_big_images_leave_no_lasting_rss() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FOUR_BIG_STATS], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    before, peak, after = map(float, result.stdout.split())
    assert peak - before > 200  # the images were held at once (so the check below means something)
    # was ~+500 MB (glibc kept the buffers); what stays now varies with the heap's layout under
    # load (+20 to +84 MB seen), so the bound is a quarter of the old retention
    assert after - before < 130, (before, peak, after)
