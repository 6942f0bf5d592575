"""model.py of every python-backend model of irgate's CPU flavour (copied into <model>/1/).

Triton's python-backend stub embeds libpython with its own sys.path: PYTHONPATH is not on it.
The project's environment comes from the config parameter `irgate_python_path` (site
directories, added with their .pth files, so an editable irgate install is found), put ahead
of the stub's own paths; then the implementation named by `irgate_model`
(irgate.triton_python.<name>.Model) does the work.
"""

import importlib
import json
import os
import site
import sys


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        before = list(sys.path)
        for folder in parameters.get("irgate_python_path", "").split(os.pathsep):
            if folder:
                site.addsitedir(folder)
        sys.path[:] = [path for path in sys.path if path not in before] + before
        module = importlib.import_module(f"irgate.triton_python.{parameters['irgate_model']}")
        self.model = module.Model(args, config, parameters)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
