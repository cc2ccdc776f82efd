"""The ``hpsearch`` command line: :mod:`~hpsearch.cli.app` parses, calls and prints; :mod:`~hpsearch.cli.options`
holds the shared options, the checks of arguments and the one-line failures; :mod:`~hpsearch.cli.output` what is
printed and written for people; :mod:`~hpsearch.cli.placement` where the workers of ``run --workers N`` run:
:mod:`~hpsearch.cli.localworkers` on one machine, :mod:`~hpsearch.cli.rayworkers` where Ray places them (``run
--ray``); :mod:`~hpsearch.cli.progress` their parent's view of the study's progress.

The top layer: may import everything else, and nothing imports it. Heavy imports happen inside the commands, so that
``hpsearch --help`` is instant.
"""
