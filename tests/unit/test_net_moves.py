"""The registry of running C-MOVE retrieves that lets the listener acknowledge
the PACS's stores early (osirix_py.net.moves)."""

from concurrent.futures import Future

from osirix_py.net.moves import ActiveMoves


def test_only_stores_from_the_pacs_for_our_move_are_expected():
    moves = ActiveMoves()
    assert not moves.expected("ORTHANC", "OSIRIXPY")  # no retrieve running
    with moves.expecting("ORTHANC", "OSIRIXPY") as exp:
        assert moves.expected("ORTHANC ", "OSIRIXPY")  # AE titles compare stripped
        assert not moves.expected("MODALITY", "OSIRIXPY")  # another sender
        assert not moves.expected("ORTHANC", "OTHERWS")  # someone else's move
        assert not moves.expected("ORTHANC", None)  # a plain push (no originator)
        assert not moves.expected("ORTHANC", "")
        f = Future()
        assert moves.track("ORTHANC", "OSIRIXPY", "1.2.3", f)
        assert exp.pending == [("1.2.3", f)]
    # Ended: nothing is expected or tracked any more (the listener then waits itself).
    assert not moves.expected("ORTHANC", "OSIRIXPY")
    assert not moves.track("ORTHANC", "OSIRIXPY", "1.2.4", Future())


def test_two_retrieves_from_one_pacs_are_told_apart_by_the_move_message_id():
    moves = ActiveMoves()
    id_a, id_b = moves.next_message_id(), moves.next_message_id()
    assert id_a != id_b
    with moves.expecting("PACS", "WS", id_a) as a:
        with moves.expecting("PACS", "WS", id_b) as b:
            assert moves.track("PACS", "WS", "1", Future(), id_b)
            assert moves.track("PACS", "WS", "2", Future(), id_a)
            # No message ID from the PACS: ambiguous, so not acknowledged early.
            assert not moves.expected("PACS", "WS", None)
            assert not moves.track("PACS", "WS", "3", Future(), None)
        assert [u for u, _ in b.pending] == ["1"]
        assert moves.expected("PACS", "WS")  # the first is still open, alone now
    assert [u for u, _ in a.pending] == ["2"]
    assert not moves.expected("PACS", "WS")


def test_the_association_a_retrieves_stores_came_on_closing_tells_that_retrieve():
    moves = ActiveMoves()
    told = []
    with moves.expecting("PACS", "WS", 1) as a, moves.expecting("PACS", "WS", 2) as b:
        a.on_source_closed = lambda: told.append("a")
        b.on_source_closed = lambda: told.append("b")
        assert moves.track("PACS", "WS", "1", Future(), 1, source=101)
        assert moves.track("PACS", "WS", "2", Future(), 2, source=202)
        moves.source_closed(303)  # another association: nobody is told
        assert told == []
        moves.source_closed(101)
        assert told == ["a"]
    moves.source_closed(202)  # (b has ended)
    assert told == ["a"]


def test_submit_into_gives_the_work_s_result_or_error_to_the_future_handed_out():
    from concurrent.futures import ThreadPoolExecutor

    from osirix_py.net.moves import submit_into

    def fail():
        raise OSError(28, "No space left on device")

    with ThreadPoolExecutor(1) as pool:
        done, failed = Future(), Future()
        submit_into(pool, done, lambda: 42)
        submit_into(pool, failed, fail)
        assert done.result(5) == 42
        assert isinstance(failed.exception(5), OSError)
    late = Future()  # the pool is shut down: the future still ends, with why
    submit_into(pool, late, lambda: 42)
    assert isinstance(late.exception(0), RuntimeError)
