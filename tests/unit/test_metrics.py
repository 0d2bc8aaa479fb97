"""The retrieval figures of Orthanc's Prometheus answer, from the job store and the DICOM node's audit, on
both engines (`db_engine`)."""

from orthanc_nas.dicom import RetrievalAudit
from orthanc_nas.dicom.audit import Retrieval
from orthanc_nas.jobs import JobStore
from orthanc_nas.metrics import job_figures, node_figures


def test_retrieval_figures_count_jobs_by_state_and_the_nodes_files(tmp_path, db_engine):
    jobs = JobStore(str(tmp_path))
    assert job_figures(jobs) == {"orthanc_nas_retrieval_jobs_pending": 0, "orthanc_nas_retrieval_jobs_running": 0,
                                 "orthanc_nas_retrieval_jobs_done": 0, "orthanc_nas_retrieval_jobs_failed": 0,
                                 "orthanc_nas_retrieval_jobs_cancelled": 0, "orthanc_nas_retrieval_files_done": 0,
                                 "orthanc_nas_retrieval_files_failed": 0, "orthanc_nas_retrieval_bytes": 0}
    done, failed, running, _pending = (jobs.create(["k"], "orthanc", 5) for _ in range(4))
    jobs.update(done, state="done", files_done=5, bytes=5000)
    jobs.update(failed, state="failed", files_done=1, files_failed=4, bytes=1000)
    jobs.update(running, state="running", files_done=2, bytes=2000)
    figures = job_figures(jobs)
    assert [figures[f"orthanc_nas_retrieval_jobs_{s}"] for s in ("pending", "running", "done", "failed", "cancelled")] \
        == [1, 1, 1, 1, 0]
    assert (figures["orthanc_nas_retrieval_files_done"], figures["orthanc_nas_retrieval_files_failed"],
            figures["orthanc_nas_retrieval_bytes"]) == (8, 4, 8000)
    jobs.close()

    audit = RetrievalAudit(str(tmp_path))
    assert node_figures(audit) == {"orthanc_nas_dicom_retrievals": 0, "orthanc_nas_dicom_files_sent": 0,
                                   "orthanc_nas_dicom_files_failed": 0}
    for sent, failed in ((3, 0), (1, 2)):
        audit.record(Retrieval("WS1", "127.0.0.1", "C-MOVE", "WS1", "STUDY", {}, files=sent + failed, sent=sent,
                               failed=failed, outcome="done"))
    assert node_figures(audit) == {"orthanc_nas_dicom_retrievals": 2, "orthanc_nas_dicom_files_sent": 4,
                                   "orthanc_nas_dicom_files_failed": 2}
    audit.close()
