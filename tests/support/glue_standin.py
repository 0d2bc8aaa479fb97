"""Run as a script (a fresh interpreter): register the plugin's glue against a stand-in `orthanc` module,
serve a few requests through the REST callback as Orthanc's HTTP threads would, and print as JSON the
answers' statuses and the modules outside the standard library that serving them imported.

argv: the DataDirectory, the NAS folder, a port where nothing listens (a modality that does not answer).
"""

import json
import sys
import sysconfig
import types
from pathlib import Path

STDLIB = sysconfig.get_paths()["stdlib"]


def outside_stdlib(module) -> bool:
    path = getattr(module, "__file__", None) or ""  # built-in modules have none
    return bool(path) and (not path.startswith(STDLIB) or "-packages" in path)


class Output:
    def __init__(self):
        self.status = None

    def SetHttpHeader(self, name, value):
        pass

    def AnswerBuffer(self, body, mime):
        self.status = 200

    def SendHttpStatus(self, status, body):
        self.status = status

    def SendHttpStatusCode(self, status):
        self.status = status

    def StartStreamAnswer(self, mime):
        self.status = 200

    def SendStreamChunk(self, chunk):
        pass


def main(data_dir: str, nas_root: str, dead_port: int) -> None:
    orthanc = types.ModuleType("orthanc")
    callbacks = {}
    orthanc.GetConfiguration = lambda: json.dumps({
        "Nas": {"Connection": {"Type": "local", "Path": nas_root}, "DataDirectory": data_dir,
                "AllowedRoots": [str(Path(nas_root).parent)], "ShareServer": {"Port": 0}},
        "DicomModalities": {"ws": ["WS1", "127.0.0.1", dead_port]}})
    orthanc.RestApiGet = lambda uri: json.dumps(
        {"ws": {"AET": "WS1", "Host": "127.0.0.1", "Port": dead_port}} if uri == "/modalities?expand" else {})
    orthanc.RegisterRestCallback = lambda uri, cb: callbacks.setdefault("rest", cb)
    orthanc.RegisterOnChangeCallback = lambda cb: callbacks.setdefault("change", cb)
    orthanc.ChangeType = types.SimpleNamespace(ORTHANC_STARTED=1, ORTHANC_STOPPED=2)
    orthanc.MetricsType = types.SimpleNamespace(DEFAULT=0)
    orthanc.ExtendOrthancExplorer = orthanc.SetRootUri = orthanc.SetDescription = lambda *a: None
    orthanc.LogError = orthanc.LogWarning = orthanc.LogInfo = lambda message: None
    sys.modules["orthanc"] = orthanc

    import nas_glue

    nas_glue.register(orthanc)
    loaded_before = set(sys.modules)
    answers = {}
    for method, uri, body in [("GET", "/nas/status", None), ("GET", "/nas/destinations", None),
                              ("POST", "/nas/destinations/ws/echo", "{}"), ("GET", "/nas/search", None),
                              ("GET", "/nas/jobs", None), ("GET", "/nas/config", None)]:
        output = Output()
        request = {"method": method, "get": {}, "headers": {"content-type": "application/json"}}
        if body is not None:
            request["body"] = body
        callbacks["rest"](output, uri, **request)
        answers[f"{method} {uri}"] = output.status
    imported = sorted(name for name in set(sys.modules) - loaded_before if outside_stdlib(sys.modules[name]))
    callbacks["change"](orthanc.ChangeType.ORTHANC_STOPPED, 0, "")
    print(json.dumps({"answers": answers, "imported": imported}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
