"""``python -m tv_lens.demo``: the offline demo (see :func:`tv_lens.demo.run.main`)."""

from .run import main

raise SystemExit(main())
