"""Shell completion of job names on the lab laptop: the names real `run` and `jobs` calls saw."""

from __future__ import annotations


def test_job_names_seen_by_run_and_jobs_are_completed(lab):
    done = lab.nbremote("run", "server", "--name", "train", "--", "sleep", "60")
    assert done.returncode == 0, done.stderr

    def tab(*words: str) -> list[str]:
        asked = lab.nbremote(
            env={
                "_NBREMOTE_COMPLETE": "bash_complete",
                "COMP_WORDS": " ".join(words),
                "COMP_CWORD": str(len(words) - 1),
            }
        )
        assert asked.returncode == 0, asked.stderr
        return [line.split(",", 1)[1] for line in asked.stdout.splitlines() if line]

    assert tab("nbremote", "logs", "server", "") == ["train"]
    assert tab("nbremote", "kill", "server", "t") == ["train"]
    assert tab("nbremote", "logs", "elsewhere", "") == []
    assert lab.nbremote("kill", "server", "train").returncode == 0
    assert lab.nbremote("jobs", "server", "--prune").returncode == 0
    assert tab("nbremote", "attach", "server", "") == []
