"""The parent's side of Redis: every call a worker makes, batched into rounds.

The modules, each owning one part (imports go down this list, never up):

- result.py: :class:`StepResult`, what a round brought back to the parent;
- faults.py: queues at fault (paused for now), and settings read back;
- outbox.py: what the worker owes Redis for the jobs it holds;
- leases.py: the jobs it holds, and the fetches that may have leased more;
- timers.py: renewals, recoveries, cancel checks, the charts' cadence;
- windows.py: the mirrors of rate-limited queues' windows;
- charts.py: the dashboard's counts and depth readings;
- server_setup.py: the server check, the scripts loaded, the worker's options;
- fetching.py: which queue to ask for how many jobs, and what came back;
- schedules.py: the scheduling duty, spread over rounds;
- commands.py: one class per command a round sends (build, apply, undo);
- plan.py: which commands a round sends, in which order;
- rounds.py: a round's replies read behind each queue's fault barrier;
- wait.py: the blocking wait on the queues' markers, and its fetch;
- facade.py: :class:`Broker`, what the parent loop calls.
"""

from sandboxq.worker.broker.facade import Broker
from sandboxq.worker.broker.result import StepResult

__all__ = ["Broker", "StepResult"]
