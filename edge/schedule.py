"""The schedule stage: when and where each decided particle's ejection happens, and the command that does it.

Single items (`BinSchedule`): the bin's ejector opens when the item reaches it, by the clock (capture time + travel
time - valve lead, edge/timing.py) or, with `[belt] position = "modbus"`, by the PLC's encoder count (capture count +
distance in counts, edge/encoder.py). Many particles (`ValveSchedule`): the valve bar's lanes under each particle,
opened for its length, arbitrated against the particles that must ride on (edge/valves.py).

Each returns, per decided particle, the bin it lands in and why: the decision's own bin and reason, or the recheck
bin (where everything lands when no valve fires) with `late` (decided after its valve had to open), `error` (the
actuator failed), `no_position` (the encoder count could not be read) or `conflict` (its pulse would hit a particle
that must ride on).
"""

import dataclasses

from edge.timing import EjectTiming


class BinSchedule:
    """One ejector per bin. `plc_fires`: the PLC fires from the published decisions (Modbus), nothing is timed here.

    Encoder-timed: without a count at capture, or now, the item cannot be placed on the belt (`no_position`). Bench
    ejectors (jsonl, serial, gpio) are fired by the encoder's poll thread when the count is reached.
    """

    def __init__(self, config, actuator, clock, belt=None, plc_fires=False):
        self.recheck = config.bins.recheck
        self.timing = EjectTiming.from_belt(config.belt)
        self.actuator, self.clock, self.belt, self.plc_fires = actuator, clock, belt, plc_fires

    def schedule(self, frame, particles, decisions, seqs, plans):
        return {p.index: self._one(frame, decisions[p.index], seqs[p.index]) for p in particles}

    def _one(self, frame, decision, seq):
        if self.belt is not None:
            return self._by_position(frame, decision, seq)
        due = self.timing.due(frame.capture_time)
        if self.clock.now() > due:
            return self.recheck, "late"  # too late to fire: the item rides on to the recheck bin
        if decision.bin != self.recheck and not self.actuator.send(decision.bin, due, frame.frame_id):
            return self.recheck, "error"  # recheck gets no command: it is where items land when none fires
        return decision.bin, decision.reason

    def _by_position(self, frame, decision, seq):
        belt = self.belt
        if frame.position is None:
            return self.recheck, "no_position"
        target = belt.target(frame.position)
        position = belt.read()
        if position is None:
            return self.recheck, "no_position"
        if belt.delta(position, target) >= 0:
            return self.recheck, "late"
        bin_name, frame_id = decision.bin, frame.frame_id
        if bin_name == self.recheck:
            return bin_name, decision.reason
        if self.plc_fires:
            ready = self.actuator.send(bin_name, self.clock.now(), frame_id)
        else:
            ready = self.actuator.open()
            if ready:
                belt.schedule(target, lambda: self.actuator.send(bin_name, self.clock.now(), frame_id),
                              seq=seq, frame=frame_id, bin=bin_name)
        return (bin_name, decision.reason) if ready else (self.recheck, "error")


class ValveSchedule:
    """The valve bar ejects the particles of `[valves] bin`; every other particle rides on to the recheck bin.
    `counts` (ParticleTally.counts) takes the conflicts and the kept particles a fired pulse hits.

    Arbitration spans frames: the Plans of particles kept and the Commands sent are remembered until they have
    passed the bar, so a pulse decided now is checked against particles an earlier frame decided to keep, and a
    particle kept now under a pulse already sent is counted `hit` (unavoidable: the command is out)."""

    def __init__(self, config, actuator, clock, bar, counts, belt=None):
        self.recheck, self.bin = config.bins.recheck, config.valves.bin
        self.actuator, self.clock, self.bar, self.counts, self.belt = actuator, clock, bar, counts, belt
        self._kept, self._sent = [], []  # earlier frames' kept Plans and sent Commands, until past the bar

    def schedule(self, frame, particles, decisions, seqs, plans):
        bar, recheck = self.bar, self.recheck
        now = self.clock.now() if self.belt is None else self.belt.read()
        if now is not None:
            self._kept = [p for p in self._kept if bar.delta(p.close_at, now) > 0]
            self._sent = [c for c in self._sent if bar.delta(c.close_at, now) > 0]
        outcome, eject, keep = {}, {}, {}
        for particle in particles:
            decision, plan = decisions[particle.index], plans.get(particle.index)
            if plan is None or now is None:
                outcome[particle.index] = (recheck, "no_position")
            elif decision.bin != self.bin:
                outcome[particle.index] = (recheck, decision.reason)
            elif bar.delta(now, plan.open_at) >= 0:
                outcome[particle.index] = (recheck, "late")
            else:
                eject[particle.index] = plan
                continue
            if plan is not None:
                keep[particle.index] = plan
        earlier = {("earlier", number): plan for number, plan in enumerate(self._kept)}
        commands, conflicts, hits = bar.arbitrate(eject, {**keep, **earlier})
        unavoidable = [k for k, plan in keep.items() if any(bar.overlap(plan, sent) for sent in self._sent)]
        self.counts["conflict"] += len(conflicts)
        self.counts["hit"] += len(set(hits) | set(unavoidable))
        self._kept += keep.values()
        for index in conflicts:
            outcome[index] = (recheck, "conflict")
        for command in commands:
            numbered = dataclasses.replace(command, particles=tuple(seqs[i] for i in command.particles))
            sent = self.actuator.send(numbered, command.open_at, frame.frame_id)
            if sent:
                self._sent.append(command)
            for index in command.particles:
                outcome[index] = (self.bin, decisions[index].reason) if sent else (recheck, "error")
        return outcome
