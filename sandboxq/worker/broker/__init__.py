"""The parent's side of Redis: every call a worker makes, batched into rounds.

A *round* is one pipelined round trip: it records the progress and logs
children sent, marks prefetched jobs started when a child took them,
settles finished jobs, hands back jobs, leases new jobs and, when due,
renews every lease, recovers stalled jobs, fires schedules and looks for
cancel requests on the jobs it holds. The parent never waits for it:
:meth:`Broker.start_round` writes it to a non-blocking connection (link.py),
the parent's ``select`` watches that connection next to the children's
pipes, and :meth:`Broker.on_round_io` returns the round's result once its
last reply arrived. One round is in flight at a time. A second connection
only ever waits: a BZPOPMIN on the queues' markers, so an idle worker wakes
within a millisecond of an add.

Redis faults are waited out, never fatal, and lose nothing:

- every Redis error is trouble to wait out (the parent backs off and starts
  another round), whether the connection broke, a reply never came (after
  ``reply_timeout``), or the server refused (MISCONF, BUSY, LOADING...);
- the replies that did arrive are used (replies come in order, so a failure
  cuts the round after its last reply) and what the other commands carried
  (finishes, progress, logs, hand-backs) goes in the next round;
- a fetch whose reply never came may still have leased jobs: the next round
  hands them back with reclaim.lua (they never started, so no stall counts)
  and makes the lost request lease nothing if it reaches Redis late;
- a finish sent twice is recognized (its lease number), and says so;
- one queue's bad settings or data pause that queue, never the worker;
- leases are judged on the Redis server's clock (clock.py).

The modules, each owning one part (imports go down this list, never up):

- result.py: :class:`RoundResult`, what a round brought back to the parent;
- faults.py: queues at fault (paused for now), and settings read back;
- outbox.py: what the worker owes Redis for the jobs it holds;
- leases.py: the jobs it holds, and the fetches that may have leased more;
- timers.py: renewals, recoveries, cancel checks, the charts' cadence;
- windows.py: the mirrors of rate-limited queues' windows;
- charts.py: the dashboard's counts and depth readings;
- server_setup.py: the server check, the scripts loaded, the worker's options;
- fetching.py: which queue to ask for how many jobs, and what came back;
- schedules.py: the scheduling duty, spread over rounds;
- commands.py, queue_commands.py: one class per command a round sends
  (build, apply, undo);
- plan.py: which commands a round sends, in which order;
- round_trip.py: the round in flight, sent and read behind each queue's fault
  barrier;
- wait.py: the blocking wait on the queues' markers, and its fetch;
- facade.py: :class:`Broker`, what the parent loop calls.
"""

from sandboxq.worker.broker.facade import Broker
from sandboxq.worker.broker.result import RoundResult

__all__ = ["Broker", "RoundResult"]
