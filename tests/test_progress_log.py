"""Progress lines are logging records, shown on stdout only while logging would not show them."""

import logging

from _run_fixtures import unconfigured_logging
from features.progress_log import progress_shown

LOGGER = logging.getLogger("fusion.run")


def test_without_logging_configured_the_lines_go_to_stdout_during_the_call_only(capsys):
    package = logging.getLogger("fusion")
    with unconfigured_logging():
        with progress_shown("fusion", prefix="  "):
            LOGGER.info("[1/3] fusion: training")
            LOGGER.debug("not at debug")
        LOGGER.info("after the call")
    assert capsys.readouterr().out == "  [1/3] fusion: training\n"
    assert package.handlers == [] and package.level == logging.NOTSET  # nothing outlives the call


def test_configured_logging_gets_the_lines_through_its_own_handlers_once(capsys, caplog):
    caplog.set_level(logging.INFO, logger="fusion")
    with unconfigured_logging() as root:
        root.addHandler(caplog.handler)
        with progress_shown("fusion"):
            LOGGER.info("[1/3] fusion: training")
        assert capsys.readouterr().out == "" and caplog.messages == ["[1/3] fusion: training"]
        # A NullHandler, as the logging HOWTO lets libraries add, shows nothing: it does not count.
        root.removeHandler(caplog.handler)
        root.addHandler(logging.NullHandler())
        with progress_shown("fusion"):
            LOGGER.info("shown")
    assert capsys.readouterr().out == "shown\n"


def test_a_level_the_program_set_is_kept_and_always_is_for_the_scripts(capsys, caplog):
    package = logging.getLogger("fusion")
    with unconfigured_logging() as root:
        package.setLevel(logging.WARNING)
        try:
            with progress_shown("fusion"):
                LOGGER.info("silenced by the program")
            assert package.level == logging.WARNING
        finally:
            package.setLevel(logging.NOTSET)
        assert capsys.readouterr().out == ""
        root.addHandler(caplog.handler)
        with progress_shown("fusion", always=True):
            LOGGER.info("the script's output")
    assert capsys.readouterr().out == "the script's output\n"
