-- Forward every complete CT/MR study to TamperScan (docs/pacs-integration.md). StableAge in
-- orthanc.json decides when a study is complete. TamperScan's own SR and key images come back
-- as SR/OT series and are never forwarded.
function OnStableStudy(studyId, tags, metadata)
  for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local modality = series['MainDicomTags']['Modality']
    if modality == 'CT' or modality == 'MR' then
      RestApiPost('/modalities/tamperscan/store',
                  DumpJson({ Resources = { series['ID'] }, Asynchronous = true }), true)
    end
  end
end
